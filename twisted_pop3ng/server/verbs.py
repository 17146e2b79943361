"""The RFC 1939 verbs: CAPA USER PASS QUIT STAT LIST UIDL NOOP RSET DELE RETR TOP.

Rules of this module: one small function per verb, ``do_VERB(protocol, cmd)``, registered in
:data:`COMMANDS` with the states it is valid in; a handler answers at once or returns a Deferred
(while that is pending no further line is read); errors are raised, never written here
(:func:`twisted_pop3ng.errors.classify` maps them to ``-ERR [CODE]``). STLS, AUTH, APOP and UTF8 are
in :mod:`.auth_verbs`.
"""

from __future__ import annotations

import operator
from typing import Any, Optional

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.python.failure import Failure

from twisted_pop3ng import wire
from twisted_pop3ng.errors import BadCommand, classify
from twisted_pop3ng.interfaces import MessageTable
from twisted_pop3ng.server import policy
from twisted_pop3ng.server.registry import CommandSet
from twisted_pop3ng.server.states import AUTHORIZATION, TRANSACTION, TRANSITIONS

COMMANDS = CommandSet()

#: The wire size of a MessageInfo (STAT sums them with ``map``).
_SIZE = operator.attrgetter("size")


@COMMANDS.command("CAPA", AUTHORIZATION, TRANSACTION)
def do_CAPA(protocol: Any, cmd: wire.Command) -> None:
    protocol._no_args(cmd)
    protocol.reply_lines("Capability list follows", [c.encode() for c in protocol.capabilities()])


@COMMANDS.command("USER", AUTHORIZATION, capability=policy.user_capability)
def do_USER(protocol: Any, cmd: wire.Command) -> None:
    policy.check_plaintext(protocol)
    name = cmd.rest.strip(b" ")
    if not name:
        raise BadCommand("USER needs a user name")
    protocol._username = name
    protocol.reply(True, "Send your password.")


@COMMANDS.command("PASS", AUTHORIZATION)
def do_PASS(protocol: Any, cmd: wire.Command) -> Optional[defer.Deferred]:
    if protocol._username is None:
        raise BadCommand("Send USER first")
    username, protocol._username = protocol._username, None
    return protocol.login(UsernamePassword(username, cmd.rest))


@COMMANDS.command("QUIT", AUTHORIZATION, TRANSACTION)
def do_QUIT(protocol: Any, cmd: wire.Command) -> Optional[defer.Deferred]:
    protocol._no_args(cmd)
    if protocol.state == AUTHORIZATION:
        protocol.close("Bye.", ok=True)
        return None
    protocol.state = TRANSITIONS[(protocol.state, "quit")]
    doomed = sorted(protocol.deleted)
    if not doomed:
        protocol._do_logout()
        protocol.close("Logging out.", ok=True)
        return None
    d = defer.maybeDeferred(protocol.mailbox.commit, doomed)

    def done(_: Any) -> None:
        protocol._do_logout()
        protocol.close("Logging out, messages deleted.", ok=True)

    def failed(failure: Failure) -> None:
        code, text, expected = classify(failure.value)
        protocol.log.failure("UPDATE failed", failure)
        protocol._do_logout()
        protocol.close("Some deleted messages were not removed: " + text, code=code)

    d.addCallbacks(done, failed)
    return d


@COMMANDS.command("STAT", TRANSACTION)
def do_STAT(protocol: Any, cmd: wire.Command) -> None:
    protocol._no_args(cmd)
    if protocol.deleted:
        live = protocol._live()
        protocol.reply(True, "%d %d" % (len(live), sum(protocol.messages[i].size for i in live)))
    else:
        messages = protocol.messages
        total = (messages.total_size() if MessageTable in type(messages).__mro__
                 else sum(map(_SIZE, messages)))
        protocol.reply(True, "%d %d" % (len(messages), total))


@COMMANDS.command("LIST", TRANSACTION)
def do_LIST(protocol: Any, cmd: wire.Command) -> None:
    index = protocol._one_or_no_message(cmd)
    if index is not None:
        protocol.reply(True, "%d %d" % (index + 1, protocol.messages[index].size))
        return
    live = protocol._live()
    total = sum(protocol.messages[i].size for i in live)
    lines = [b"%d %d" % (i + 1, protocol.messages[i].size) for i in live]
    protocol.reply_lines("%d messages (%d octets)" % (len(live), total), lines)


@COMMANDS.command("UIDL", TRANSACTION, capability="UIDL")
def do_UIDL(protocol: Any, cmd: wire.Command) -> None:
    index = protocol._one_or_no_message(cmd)
    if index is not None:
        protocol.reply(True, "%d %s" % (index + 1, protocol.messages[index].uid))
        return
    listing = getattr(protocol.mailbox, "uidl_listing", None) if not protocol.deleted else None
    if listing is not None:  # the optional hook: a listing kept with the mailbox's snapshot
        body = listing()
    else:
        messages = protocol.messages
        body = wire.uidl_body((i + 1, messages[i].uid) for i in protocol._live())
    protocol.write(wire.response(True, "Unique-ID listing follows"))
    protocol.write(body)
    protocol.write(wire.TERMINATOR)


@COMMANDS.command("NOOP", TRANSACTION)
def do_NOOP(protocol: Any, cmd: wire.Command) -> None:
    protocol._no_args(cmd)
    protocol.reply(True)


@COMMANDS.command("RSET", TRANSACTION)
def do_RSET(protocol: Any, cmd: wire.Command) -> None:
    protocol._no_args(cmd)
    protocol.deleted.clear()  # type: ignore[attr-defined]
    protocol.reply(True, "%d messages" % len(protocol.messages))


@COMMANDS.command("DELE", TRANSACTION)
def do_DELE(protocol: Any, cmd: wire.Command) -> None:
    words = cmd.words()
    if len(words) != 1:
        raise BadCommand("DELE needs one message number")
    index = protocol._message(words[0])
    protocol.deleted.add(index)  # type: ignore[attr-defined]
    protocol.reply(True, "Marked to be deleted.")


@COMMANDS.command("RETR", TRANSACTION)
def do_RETR(protocol: Any, cmd: wire.Command) -> Optional[defer.Deferred]:
    words = cmd.rest.split()
    if len(words) != 1:
        raise BadCommand("RETR needs one message number")
    index = protocol._message(words[0])
    # (The status line formatted here, not by the cached wire.response: sizes vary.)
    return protocol.send_message(index, b"+OK %d octets\r\n" % protocol.messages[index].size)


@COMMANDS.command("TOP", TRANSACTION, capability="TOP")
def do_TOP(protocol: Any, cmd: wire.Command) -> defer.Deferred:
    words = cmd.words()
    if len(words) != 2:
        raise BadCommand("TOP needs a message number and a line count")
    index = protocol._message(words[0])
    try:
        lines = wire.parse_count(words[1])
    except wire.WireError as error:
        raise BadCommand(str(error))
    return protocol.send_message(index, wire.response(True, "Message follows"),
                             wire.MessageEncoder(body_lines=lines))
