"""The RFC 1939 verbs: CAPA USER PASS QUIT STAT LIST UIDL NOOP RSET DELE RETR TOP.

Rules of this module: one small function per verb, ``do_VERB(protocol, cmd)``, registered in
:data:`COMMANDS` with the states it is valid in; the session's state is read from and written to
``protocol.session`` (read once into a local where a verb uses several fields); a handler
answers at once or returns a Deferred (while that is pending no further line is read); errors are
raised, never written here (:func:`twisted_pop3ng.errors.classify` maps them to ``-ERR [CODE]``).
STLS, AUTH, APOP and UTF8 are in :mod:`.auth_verbs`.
"""

from __future__ import annotations

import operator
from typing import Any, Optional

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.python.failure import Failure

from twisted_pop3ng import wire
from twisted_pop3ng.errors import BadCommand, classify, log_failure
from twisted_pop3ng.interfaces import MessageTable
from twisted_pop3ng.server import policy
from twisted_pop3ng.server.registry import CommandSet
from twisted_pop3ng.server.session import ServerConnection
from twisted_pop3ng.server.states import AUTHORIZATION, TRANSACTION, TRANSITIONS

COMMANDS = CommandSet()

#: The wire size of a MessageInfo (STAT sums them with ``map``).
_SIZE = operator.attrgetter("size")


@COMMANDS.command("CAPA", AUTHORIZATION, TRANSACTION)
def do_CAPA(protocol: ServerConnection, cmd: wire.Command) -> None:
    protocol._no_args(cmd)
    protocol.reply_lines("Capability list follows", [c.encode() for c in protocol.capabilities()])


@COMMANDS.command("USER", AUTHORIZATION, capability=policy.user_capability)
def do_USER(protocol: ServerConnection, cmd: wire.Command) -> None:
    policy.check_plaintext(protocol)
    name = cmd.rest.strip(b" ")
    if not name:
        raise BadCommand("USER needs a user name")
    protocol.session.username = name
    protocol.reply(True, "Send your password.")


@COMMANDS.command("PASS", AUTHORIZATION)
def do_PASS(protocol: ServerConnection, cmd: wire.Command) -> Optional[defer.Deferred]:
    session = protocol.session
    username = session.username
    if username is None:
        raise BadCommand("Send USER first")
    session.username = None
    return protocol.login(UsernamePassword(username, cmd.rest), "USER")


#: Seconds after which an UPDATE still running is logged (it goes on: only the client's reply and
#: the maildrop's unlock wait for it).
SLOW_COMMIT = 60.0


@COMMANDS.command("QUIT", AUTHORIZATION, TRANSACTION)
def do_QUIT(protocol: ServerConnection, cmd: wire.Command) -> Optional[defer.Deferred]:
    protocol._no_args(cmd)
    session = protocol.session
    session.ended = "quit"
    if session.state == AUTHORIZATION:
        protocol.close("Bye.", ok=True)
        return None
    session.state = TRANSITIONS[(session.state, "quit")]
    doomed = sorted(session.deleted)
    if not doomed:
        return protocol.logout_then_close("Logging out.", ok=True)
    # The commit's time is the server's: an inactivity timeout now would tell the client its
    # deletions failed while they go on (and a fetcher would download them again). A commit that
    # is slow enough to look stuck is logged instead.
    d = defer.maybeDeferred(session.mailbox.commit, doomed)
    if not d.called:
        protocol.setTimeout(None)
        slow = protocol.clock.callLater(SLOW_COMMIT, protocol.log.warn,
                                        "UPDATE of {user} still running after {seconds} s",
                                        user=session.admitted_user or "?", seconds=SLOW_COMMIT)
        d.addBoth(lambda result: (slow.cancel() if slow.active() else None, result)[1])

    def done(_: Any) -> Optional[defer.Deferred]:
        stats = protocol.factory.stats
        if stats is not None:
            stats.deletions += len(doomed)
            if session.summary is not None:
                session.summary.deleted = len(doomed)
        return protocol.logout_then_close("Logging out, messages deleted.", ok=True)

    def failed(failure: Failure) -> Optional[defer.Deferred]:
        code, text, expected = classify(failure.value)
        log_failure(protocol.log, "UPDATE failed", failure)
        return protocol.logout_then_close("Some deleted messages were not removed: " + text, code=code)

    d.addCallbacks(done, failed)
    return d


@COMMANDS.command("STAT", TRANSACTION)
def do_STAT(protocol: ServerConnection, cmd: wire.Command) -> None:
    protocol._no_args(cmd)
    session = protocol.session
    messages = session.messages
    if session.deleted:
        live = protocol._live()
        protocol.reply(True, "%d %d" % (len(live), sum(messages[i].size for i in live)))
    else:
        total = (messages.total_size() if MessageTable in type(messages).__mro__
                 else sum(map(_SIZE, messages)))
        protocol.reply(True, "%d %d" % (len(messages), total))


@COMMANDS.command("LIST", TRANSACTION)
def do_LIST(protocol: ServerConnection, cmd: wire.Command) -> None:
    index = protocol._one_or_no_message(cmd)
    messages = protocol.session.messages
    if index is not None:
        protocol.reply(True, "%d %d" % (index + 1, messages[index].size))
        return
    live = protocol._live()
    total = sum(messages[i].size for i in live)
    lines = [b"%d %d" % (i + 1, messages[i].size) for i in live]
    protocol.reply_lines("%d messages (%d octets)" % (len(live), total), lines)


@COMMANDS.command("UIDL", TRANSACTION, capability="UIDL")
def do_UIDL(protocol: ServerConnection, cmd: wire.Command) -> None:
    index = protocol._one_or_no_message(cmd)
    session = protocol.session
    messages = session.messages
    if index is not None:
        protocol.reply(True, "%d %s" % (index + 1, messages[index].uid))
        return
    listing = session.uidl_listing if not session.deleted else None
    if listing is not None:  # IUIDLListing (bound at login): a listing kept with the snapshot
        body = listing()
    else:
        body = wire.uidl_body((i + 1, messages[i].uid) for i in protocol._live())
    protocol.write(wire.response(True, "Unique-ID listing follows"))
    protocol.write(body)
    protocol.write(wire.TERMINATOR)


@COMMANDS.command("NOOP", TRANSACTION)
def do_NOOP(protocol: ServerConnection, cmd: wire.Command) -> None:
    protocol._no_args(cmd)
    protocol.reply(True)


@COMMANDS.command("RSET", TRANSACTION)
def do_RSET(protocol: ServerConnection, cmd: wire.Command) -> None:
    protocol._no_args(cmd)
    session = protocol.session
    session.deleted.clear()  # type: ignore[attr-defined]
    protocol.reply(True, "%d messages" % len(session.messages))


@COMMANDS.command("DELE", TRANSACTION)
def do_DELE(protocol: ServerConnection, cmd: wire.Command) -> None:
    words = cmd.words()
    if len(words) != 1:
        raise BadCommand("DELE needs one message number")
    index = protocol._message(words[0])
    protocol.session.deleted.add(index)  # type: ignore[attr-defined]
    protocol.reply(True, "Marked to be deleted.")


@COMMANDS.command("RETR", TRANSACTION)
def do_RETR(protocol: ServerConnection, cmd: wire.Command) -> Optional[defer.Deferred]:
    words = cmd.rest.split()
    if len(words) != 1:
        raise BadCommand("RETR needs one message number")
    index = protocol._message(words[0])
    # (The status line formatted here, not by the cached wire.response: sizes vary.)
    return protocol.send_message(index, b"+OK %d octets\r\n" % protocol.session.messages[index].size)


@COMMANDS.command("TOP", TRANSACTION, capability="TOP")
def do_TOP(protocol: ServerConnection, cmd: wire.Command) -> Optional[defer.Deferred]:
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
