"""An application written for Twisted's own POP3 server, served by twisted-pop3ng unchanged.

The first half is what such an application already has: a realm handing out
``twisted.mail.pop3.IMailbox`` avatars (here Twisted's in-memory ``StringListMailbox``) and a
``twisted.cred`` checker. The second half is all it takes to move: wrap the realm in
:class:`~twisted_pop3ng.mailbox.twisted_mail.TwistedMailRealmAdapter` and hand the portal to
:class:`~twisted_pop3ng.server.POP3ServerFactory` instead of ``twisted.mail.pop3.POP3``.

Run it with ``python3 twisted_mail_adapter.py [PORT]`` (default 1100; 0 picks a free port and
prints it) and read with any POP3 client on 127.0.0.1 (user ``alice``, password ``wonderland``).
``twisted_pop3ng/test/test_twisted_mail_adapter.py`` runs this very file and fetches its mail.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Tuple

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.mail import pop3
from twisted.mail.maildir import StringListMailbox
from zope.interface import implementer

from twisted_pop3ng.mailbox.twisted_mail import TwistedMailRealmAdapter
from twisted_pop3ng.server import POP3ServerFactory, ServerConfig

# -- the existing Twisted application -------------------------------------------------------------


@implementer(IRealm)
class InMemoryMailRealm:
    """One ``StringListMailbox`` per user, kept across sessions (a twisted.mail realm)."""

    def __init__(self, mail: Dict[bytes, List[bytes]]) -> None:
        self.mailboxes = {user: StringListMailbox(messages) for user, messages in mail.items()}

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Tuple[Any, Any, Callable[[], None]]:
        if pop3.IMailbox not in interfaces:
            raise NotImplementedError("this realm only gives POP3 mailboxes")
        return pop3.IMailbox, self.mailboxes[avatarId], lambda: None


def existing_application() -> Tuple[InMemoryMailRealm, InMemoryUsernamePasswordDatabaseDontUse]:
    realm = InMemoryMailRealm({
        b"alice": [
            b"From: queen@example.org\r\nSubject: Croquet\r\n\r\nAt three, with flamingos.\r\n",
            # Stored with bare LF: its LIST size is what a client receives (CRLF), not its length.
            b"From: rabbit@example.org\nSubject: Late\n\nOh dear! Oh dear!\n.I shall be too late!\n",
        ],
    })
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"wonderland")
    return realm, checker


# -- served by twisted-pop3ng ---------------------------------------------------------------------


def make_factory() -> POP3ServerFactory:
    realm, checker = existing_application()
    portal = Portal(TwistedMailRealmAdapter(realm), [checker])
    return POP3ServerFactory(portal, ServerConfig(idle_timeout=900))


def main(argv: List[str]) -> None:
    from twisted.internet import endpoints, reactor

    port = int(argv[1]) if len(argv) > 1 else 1100
    endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")

    def listening(listener: Any) -> None:
        print("listening on 127.0.0.1:%d" % listener.getHost().port, flush=True)

    endpoint.listen(make_factory()).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
