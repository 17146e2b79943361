"""The realm: turns an authenticated avatar id into a locked ``IMailbox`` and a logout hook."""

from __future__ import annotations

from typing import Any, Callable, Tuple

from twisted.cred.portal import IRealm
from twisted.internet import defer
from zope.interface import implementer

from twisted_pop3ng.interfaces import IMailbox


@implementer(IRealm)
class MailboxRealm:
    """Opens the maildrop of the user through an ``IMailboxStore``; logout closes (unlocks) it."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if IMailbox not in interfaces:
            raise NotImplementedError("this realm only provides IMailbox")
        user = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
        def avatar(mailbox: Any) -> Tuple[Any, Any, Callable[[], None]]:
            return IMailbox, mailbox, mailbox.close

        # The portal takes a value or a Deferred; a synchronous store needs no Deferred of its own.
        opened = self.store.open_mailbox(user)
        # (Deferred's metaclass is ABCMeta: isinstance runs a Python __instancecheck__; the MRO
        # test is C only. A Deferred subclass counts; a virtual one was never registered.)
        if defer.Deferred in type(opened).__mro__:
            return opened.addCallback(avatar)
        return avatar(opened)
