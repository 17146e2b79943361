"""Twisted's stock ``twisted.mail.pop3.POP3`` over maildirs, as a benchmark peer.

The stock protocol class is used unchanged. The smallest fixes it needs to run on Python 3:

* ``MaildirMailbox.getMessage`` opens the file in text mode; the protocol writes bytes, so it is
  opened in binary mode here;
* the protocol finds its portal on itself, not on the factory, so the factory sets it;
* ``factory.noisy = False`` so every connection is not logged (no peer logs per connection).

Messages must be stored with LF line endings (as MDAs store them): ``transformChunk`` turns every
LF into CRLF, so stored CRLF would go out as CR CR LF. Usage::

    python twisted_mail_server.py USERS TEMPLATE CERT KEY   # prints "PORTS plain tls", then serves
"""

from __future__ import annotations

import sys
from typing import Any, Dict


def main(argv: list) -> None:
    users_path, template, cert, key = argv[1:5]
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
    from twisted.cred.portal import IRealm, Portal
    from twisted.internet import endpoints, reactor, ssl
    from twisted.internet.protocol import Factory
    from twisted.mail import maildir, pop3
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from zope.interface import implementer

    class BinaryMaildirMailbox(maildir.MaildirMailbox):
        def getMessage(self, i: int) -> Any:
            return open(self.list[i], "rb")

    @implementer(IRealm)
    class Realm:
        def requestAvatar(self, avatar_id: bytes, mind: Any, *interfaces: Any) -> Any:
            path = template.replace("{user}", avatar_id.decode()).encode()
            return pop3.IMailbox, BinaryMaildirMailbox(path), lambda: None

    users: Dict[bytes, bytes] = {}
    with open(users_path, "rb") as f:
        for line in f:
            name, _, secret = line.rstrip(b"\n").partition(b":")
            users[name] = secret.split(b"}", 1)[1].split(b":")[0]
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.users = users
    portal = Portal(Realm(), [checker])

    class POP3Factory(Factory):
        noisy = False

        def buildProtocol(self, addr: Any) -> Any:
            protocol = pop3.POP3()
            protocol.factory = self
            protocol.portal = portal
            return protocol

    factory = POP3Factory()
    with open(cert, "rb") as f:
        cert_pem = f.read()
    with open(key, "rb") as f:
        key_pem = f.read()
    options = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    plain = endpoints.TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1")
    secure = endpoints.TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1")

    def report(ports: list) -> None:
        sys.stdout.write("PORTS %d %d\n" % (ports[0].getHost().port, ports[1].getHost().port))
        sys.stdout.flush()

    from twisted.internet import defer

    d = defer.gatherResults([plain.listen(factory),
                             secure.listen(TLSMemoryBIOFactory(options, False, factory))])
    d.addCallback(report)
    d.addErrback(lambda f: (sys.stderr.write(f.getTraceback()), reactor.stop()))
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
