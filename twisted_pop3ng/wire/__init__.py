"""Sans-I/O POP3 wire codec, shared by the server and the client.

Rules of this package:

* no Twisted imports and no I/O (an import-linter contract holds this): every function takes bytes
  and returns bytes or values;
* every limit is a named constant with the RFC that sets it (:mod:`.limits`);
* the streaming encoder and decoder carry their state across chunk boundaries, so a caller may feed
  them any split of the input and get the same result (:mod:`.message`);
* the UIDL rule is written once (:mod:`.uid`);
* the optional C module ``_speedups`` replaces the byte loops where it is built; the pure-Python
  twins stay available as ``py_*`` and the tests compare both.

The modules: :mod:`.limits`, :mod:`.command` (command lines), :mod:`.status` (status lines),
:mod:`.message` (bodies: stuffing, CRLF, sizes), :mod:`.uid` (UIDL). Everything is re-exported here,
so ``from twisted_pop3ng import wire`` and ``wire.NAME`` keep working.
"""

from twisted_pop3ng.wire.command import (Command, WireError, parse_command, parse_count,
                                         parse_message_number)
from twisted_pop3ng.wire.limits import (CRLF, MAX_ANY_LINE, MAX_AUTH_LINE, MAX_COMMAND_LINE,
                                        MAX_NUMBER_DIGITS, MAX_RESPONSE_LINE, MAX_UID_LENGTH,
                                        MAX_VERB_LENGTH, TERMINATOR)
from twisted_pop3ng.wire.message import (SPEEDUPS, MessageEncoder, MultiLineDecoder, encode_body,
                                         encode_message, encode_whole, encode_whole_pieces,
                                         py_encode_body, py_stuff_dots, py_wire_size_of,
                                         stuff_dots, wire_size, wire_size_of)
from twisted_pop3ng.wire.status import Status, parse_status, response
from twisted_pop3ng.wire.uid import is_valid_uid, uidl_body, valid_uid

__all__ = [
    "CRLF", "TERMINATOR", "MAX_ANY_LINE", "MAX_AUTH_LINE", "MAX_COMMAND_LINE", "MAX_NUMBER_DIGITS",
    "MAX_RESPONSE_LINE", "MAX_UID_LENGTH", "MAX_VERB_LENGTH",
    "Command", "WireError", "parse_command", "parse_count", "parse_message_number",
    "Status", "parse_status", "response",
    "MessageEncoder", "MultiLineDecoder", "encode_body", "encode_message", "encode_whole",
    "encode_whole_pieces", "stuff_dots", "wire_size", "wire_size_of",
    "py_encode_body", "py_stuff_dots", "py_wire_size_of", "SPEEDUPS",
    "is_valid_uid", "uidl_body", "valid_uid",
]
