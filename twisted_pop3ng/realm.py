"""The realm: turns an authenticated avatar id into a locked ``IMailbox`` and a logout hook."""

from __future__ import annotations

from typing import Any, Callable, Tuple

from twisted.cred.portal import IRealm
from twisted.internet import defer
from zope.interface import implementer

from .interfaces import IMailbox


@implementer(IRealm)
class MailboxRealm:
    """Opens the maildrop of the user through an ``IMailboxStore``; logout closes (unlocks) it."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        if IMailbox not in interfaces:
            raise NotImplementedError("this realm only provides IMailbox")
        user = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
        d = defer.maybeDeferred(self.store.open_mailbox, user)

        def avatar(mailbox: Any) -> Tuple[Any, Any, Callable[[], None]]:
            return IMailbox, mailbox, mailbox.close

        return d.addCallback(avatar)
