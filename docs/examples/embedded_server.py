"""A notice board served over POP3: an embedded twisted-pop3ng server with its own checker, realm
and mailbox backend.

Every user sees the board's notices as messages; deleting one (DELE + QUIT) dismisses it for that
user only. Run it with ``python3 embedded_server.py`` and read with any POP3 client on
127.0.0.1:1100 (user ``alice``, password ``wonderland``); its tests are in
``twisted_pop3ng/test/test_docs_examples.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
from typing import Dict, List, Optional, Sequence, Set, Tuple

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from zope.interface import implementer

from twisted_pop3ng.errors import MailboxInUse
from twisted_pop3ng.interfaces import IMailbox, IWholeMessageReader, MessageInfo
from twisted_pop3ng.server import POP3ServerFactory, ServerConfig
from twisted_pop3ng.wire import wire_size_of


# -- the checker: salted PBKDF2 hashes kept in memory ---------------------------------------------


def hash_password(password: bytes, salt: Optional[bytes] = None) -> Tuple[bytes, bytes]:
    salt = os.urandom(16) if salt is None else salt
    return salt, hashlib.pbkdf2_hmac("sha256", password, salt, 100_000)


@implementer(ICredentialsChecker)
class HashedPasswordChecker:
    """Checks USER/PASS (and AUTH PLAIN/LOGIN) against salted hashes; the avatar id is the name."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, passwords: Dict[str, str]) -> None:
        self._hashes = {user.encode(): hash_password(pw.encode()) for user, pw in passwords.items()}

    def requestAvatarId(self, credentials: IUsernamePassword) -> defer.Deferred:
        salt, expected = self._hashes.get(credentials.username, (b"x" * 16, b""))
        _, given = hash_password(credentials.password, salt)
        if expected and hmac.compare_digest(given, expected):
            return defer.succeed(credentials.username)
        return defer.fail(UnauthorizedLogin())


# -- the backend: the board, and one user's view of it as an IMailbox -----------------------------


class NoticeBoard:
    """The data: notices in posting order, and which each user has dismissed."""

    def __init__(self) -> None:
        self.notices: List[Tuple[str, bytes]] = []
        self.dismissed: Dict[str, Set[str]] = {}
        self.in_use: Set[str] = set()

    def post(self, text: bytes) -> str:
        uid = "notice-%d" % (len(self.notices) + 1)
        self.notices.append((uid, text))
        return uid


@implementer(IMailbox, IWholeMessageReader)  # (the second: the server calls read_whole)
class BoardMailbox:
    """One session's snapshot of the board for one user; the lock is ``board.in_use``."""

    def __init__(self, board: NoticeBoard, user: str) -> None:
        if user in board.in_use:
            raise MailboxInUse()  # the client gets -ERR [IN-USE]
        board.in_use.add(user)
        self.board, self.user = board, user
        hidden = board.dismissed.get(user, set())
        self.snapshot = [(uid, text) for uid, text in board.notices if uid not in hidden]

    def list_messages(self) -> List[MessageInfo]:
        return [MessageInfo(uid, wire_size_of(text)) for uid, text in self.snapshot]

    def open_message(self, index: int) -> io.BytesIO:
        return io.BytesIO(self.snapshot[index][1])

    def read_whole(self, index: int, limit: int) -> Optional[bytes]:
        # Optional: small messages go out in one write instead of being streamed.
        text = self.snapshot[index][1]
        return text if len(text) < limit else None

    def commit(self, deleted: Sequence[int]) -> None:
        self.board.dismissed.setdefault(self.user, set()).update(self.snapshot[i][0] for i in deleted)

    def close(self) -> None:
        self.board.in_use.discard(self.user)


# -- the realm: an authenticated name becomes a mailbox, and logout closes it ---------------------


@implementer(IRealm)
class BoardRealm:
    def __init__(self, board: NoticeBoard) -> None:
        self.board = board

    def requestAvatar(self, avatarId: bytes, mind: object, *interfaces: object) -> tuple:
        if IMailbox not in interfaces:
            raise NotImplementedError("this realm only provides IMailbox")
        mailbox = BoardMailbox(self.board, avatarId.decode("utf-8"))
        return IMailbox, mailbox, mailbox.close


def make_portal(board: NoticeBoard, passwords: Dict[str, str]) -> Portal:
    return Portal(BoardRealm(board), [HashedPasswordChecker(passwords)])


def make_factory(board: NoticeBoard, passwords: Dict[str, str]) -> POP3ServerFactory:
    return POP3ServerFactory(make_portal(board, passwords), ServerConfig(idle_timeout=900))


def main() -> None:  # pragma: no cover (needs a network port)
    from twisted.internet import endpoints, reactor

    board = NoticeBoard()
    board.post(b"Subject: Welcome\n\nThe board is open.\n")
    factory = make_factory(board, {"alice": "wonderland"})
    endpoints.serverFromString(reactor, "tcp:1100:interface=127.0.0.1").listen(factory)
    reactor.run()


if __name__ == "__main__":
    main()
