"""Serve an existing ``twisted.mail.pop3.IMailbox`` implementation with this server.

Code written for Twisted's own POP3 server hands out mailboxes with ``listMessages``,
``getMessage``, ``getUidl``, ``deleteMessage``, ``undeleteMessages`` and ``sync``, from a realm asked
for ``twisted.mail.pop3.IMailbox``. :class:`TwistedMailRealmAdapter` wraps such a realm into one that
this server can use with the same portal and checkers::

    portal = Portal(TwistedMailRealmAdapter(their_realm), their_checkers)
    factory = POP3ServerFactory(portal)

How the two contracts meet (Twisted's on the left):

* **Snapshot.** ``listMessages()`` (a list, or a Deferred of one) is read once, at the session's
  first look; sizes of 0 are Twisted's mark of a deleted message and are not listed (an in-memory
  ``StringListMailbox`` keeps its synced messages as empty strings).
* **Sizes.** Twisted's sizes are octets as stored, not necessarily what a client receives (a bare
  LF is sent as CRLF), so each message is read once at that first look and measured
  (:func:`~twisted_pop3ng.wire.wire_size`): ``LIST`` then matches ``RETR`` exactly. A backend whose
  sizes already are wire sizes passes ``trust_sizes=True`` and is not read at login.
* **UIDLs.** ``getUidl`` may give ``bytes`` or ``str``. One that RFC 1939 does not allow (spaces,
  more than 70 characters) is replaced by a digest of it, stable as it is; a repeated one gets a
  ``-N`` suffix in listing order (and a logged warning: the backend breaks its own contract).
* **Deletion.** ``DELE`` and ``RSET`` are marks kept by this server, as for every backend; only at
  ``QUIT`` does the adapter call ``deleteMessage`` for each message marked, then ``sync()``. A
  session that ends any other way touches nothing. If a ``deleteMessage`` fails, the marks given so
  far are withdrawn with ``undeleteMessages()`` and nothing is synced.
* **Lock.** Twisted's realms give no exclusive access; the adapter locks each avatar id within the
  process, so a second session of the same user gets ``-ERR [IN-USE]``.
* **Logout.** The realm's logout callable runs once the session ends, however it ends.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from twisted.cred.portal import IRealm

from twisted_pop3ng.errors import MailboxInUse, MessageVanished
from twisted_pop3ng.interfaces import IMailbox, MessageInfo
from twisted_pop3ng.wire import wire_size
from twisted_pop3ng.wire.uid import valid_uid

__all__ = ["TwistedMailRealmAdapter", "TwistedMailbox", "adapt_mailbox"]

_log = Logger()
#: How much of a message is read at once while measuring it.
READ_SIZE = 1 << 16


def _read_chunks(source: Any) -> Any:
    try:
        while True:
            chunk = source.read(READ_SIZE)
            if not chunk:
                return
            yield chunk.encode("utf-8") if isinstance(chunk, str) else chunk
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


@implementer(IMailbox)
class TwistedMailbox:
    """One session's view of a ``twisted.mail.pop3.IMailbox`` (see the module's rules)."""

    #: Its UIDLs follow RFC 1939's rule (made so where they are made): the server need not check.
    uidls_valid = True

    def __init__(self, mailbox: Any, logout: Callable[[], Any] = lambda: None,
                 trust_sizes: bool = False, unlock: Callable[[], None] = lambda: None) -> None:
        self.mailbox = mailbox
        self._logout = logout
        self._unlock = unlock
        self.trust_sizes = trust_sizes
        #: Twisted's index of each message of the snapshot (deleted ones are left out).
        self._positions: List[int] = []
        self._infos: Optional[List[MessageInfo]] = None
        self._closed = False

    def list_messages(self) -> Any:
        if self._infos is not None:
            return self._infos
        return defer.maybeDeferred(self.mailbox.listMessages).addCallback(self._snapshot)

    def _snapshot(self, sizes: Sequence[int]) -> List[MessageInfo]:
        positions = [i for i, size in enumerate(sizes) if size]
        uids = self._unique([valid_uid(self.mailbox.getUidl(i)) for i in positions])
        if self.trust_sizes:
            measured = [sizes[i] for i in positions]
        else:
            measured = [wire_size(_read_chunks(self.mailbox.getMessage(i))) for i in positions]
        self._positions = positions
        self._infos = [MessageInfo(uid, size) for uid, size in zip(uids, measured)]
        return self._infos

    def _unique(self, uids: List[str]) -> List[str]:
        seen: Dict[str, int] = {}
        unique = []
        for uid in uids:
            count = seen.get(uid, 0) + 1
            seen[uid] = count
            if count > 1:
                _log.warn("twisted.mail mailbox {mailbox!r} gives the UIDL {uid!r} to two messages",
                          mailbox=self.mailbox, uid=uid)
                uid = valid_uid("%s-%d" % (uid, count))
            unique.append(uid)
        return unique

    def open_message(self, index: int) -> Any:
        try:
            source = self.mailbox.getMessage(self._positions[index])
        except (IndexError, ValueError, KeyError):
            raise MessageVanished()
        return _BinaryReader(source)

    def commit(self, deleted: Sequence[int]) -> Any:
        if not deleted:
            return None
        marked = 0
        try:
            for index in deleted:
                self.mailbox.deleteMessage(self._positions[index])
                marked += 1
        except BaseException:
            if marked:
                self.mailbox.undeleteMessages()
            raise
        return defer.maybeDeferred(self.mailbox.sync)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._logout()
        finally:
            self._unlock()


class _BinaryReader:
    """A Twisted message file as the binary file the server reads: ``str`` chunks (old code opened
    messages in text mode) are sent as UTF-8."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size)
        return chunk.encode("utf-8") if isinstance(chunk, str) else chunk

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


def adapt_mailbox(mailbox: Any, trust_sizes: bool = False) -> TwistedMailbox:
    """One ``twisted.mail.pop3.IMailbox`` as an :class:`~twisted_pop3ng.interfaces.IMailbox`."""
    return TwistedMailbox(mailbox, trust_sizes=trust_sizes)


@implementer(IRealm)
class TwistedMailRealmAdapter:
    """A realm for this server from a realm of Twisted's POP3 server (one that gives
    ``twisted.mail.pop3.IMailbox`` avatars). The avatar id reaches ``realm`` as the checker made it."""

    def __init__(self, realm: Any, trust_sizes: bool = False) -> None:
        self.realm = realm
        self.trust_sizes = trust_sizes
        self._locked: Set[Any] = set()

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        from twisted.mail import pop3

        if IMailbox not in interfaces:
            raise NotImplementedError("this realm only provides twisted_pop3ng's IMailbox")
        if avatarId in self._locked:
            raise MailboxInUse()
        self._locked.add(avatarId)
        unlock = lambda: self._locked.discard(avatarId)  # noqa: E731

        def adapted(avatar: Tuple[Any, Any, Callable[[], Any]]) -> Tuple[Any, Any, Callable[[], None]]:
            _, mailbox, logout = avatar
            box = TwistedMailbox(mailbox, logout, self.trust_sizes, unlock)
            return IMailbox, box, box.close

        def failed(reason: Any) -> Any:
            unlock()
            return reason

        return defer.maybeDeferred(self.realm.requestAvatar, avatarId, mind,
                                   pop3.IMailbox).addCallbacks(adapted, failed)
