"""Every limit of the POP3 wire, each a named constant with the RFC (or precedent) that sets it.

Rules of this module: a leaf; constants only.
"""

#: RFC 2449 §4: a command line is at most 255 octets, CRLF included.
MAX_COMMAND_LINE = 255
#: RFC 2449 §4: a response line is at most 512 octets, CRLF included.
MAX_RESPONSE_LINE = 512
#: RFC 5034 §4 lets SASL continuation lines be longer than 255 octets; OAuth bearer tokens need room.
MAX_AUTH_LINE = 16384
#: Beyond this a line is abuse rather than a mistake: the connection is closed after a -ERR.
MAX_ANY_LINE = MAX_AUTH_LINE + 1024
#: RFC 2449 §6.9 / RFC 1939: a UIDL is 1-70 characters in 0x21-0x7E.
MAX_UID_LENGTH = 70
#: Longest verb we bother to look up (RFC 1939 verbs are 3-4 characters, extensions a little more).
MAX_VERB_LENGTH = 16
#: Message numbers larger than this are certainly out of range; refuse before int() on huge strings.
MAX_NUMBER_DIGITS = 10

CRLF = b"\r\n"
TERMINATOR = b".\r\n"
