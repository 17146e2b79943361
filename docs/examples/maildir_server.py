"""POP3S over maildirs, embedded in your own Twisted program: the stock realm and maildir store, users
from a Dovecot-format passwd-file (hashed passwords, made with ``pop3ng passwd``), TLS from the first
byte, the certificate re-read on SIGHUP.

    python3 maildir_server.py CERT KEY PASSWD_FILE '/var/mail/{user}/Maildir' [ENDPOINT]

ENDPOINT defaults to ``tcp:995``. Its tests, which run it on a real port with a real certificate,
are in ``twisted_pop3ng/test/test_docs_examples.py``.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, List, Optional

from twisted.cred.portal import Portal
from twisted.internet import defer, endpoints
from twisted.protocols.tls import TLSMemoryBIOFactory

from twisted_pop3ng.auth.checkers import PasswdFileChecker
from twisted_pop3ng.mailbox.maildir import MaildirStore
from twisted_pop3ng.server import MailboxRealm, POP3ServerFactory, ServerConfig
from twisted_pop3ng.tls import ReloadableServerTLS


def make_factory(passwd_file: str, maildir_template: str, tls: ReloadableServerTLS) -> POP3ServerFactory:
    """The POP3 server: a portal (who may log in) around a realm (what they get: their maildir)."""
    portal = Portal(MailboxRealm(MaildirStore(maildir_template)), [PasswdFileChecker(passwd_file)])
    # tls= lets the server offer STLS on plain listeners too; here every listener is POP3S.
    return POP3ServerFactory(portal, ServerConfig(idle_timeout=600), tls=tls)


def listen_pop3s(reactor: Any, endpoint: str, factory: POP3ServerFactory,
                 tls: ReloadableServerTLS) -> defer.Deferred:
    """Listen on ``endpoint`` with TLS from the first byte; fires with the listening port."""
    wrapped = TLSMemoryBIOFactory(tls, False, factory)
    return endpoints.serverFromString(reactor, endpoint).listen(wrapped)


def reload_certificate_on_sighup(reactor: Any, tls: ReloadableServerTLS) -> None:
    """``kill -HUP`` re-reads the certificate and key (a renewed certificate); open sessions keep
    theirs. A file that does not load leaves the old certificate in use."""
    def reload() -> None:
        try:
            tls.reload()
        except ValueError as error:  # TLSConfigError: missing file, key that does not match...
            print("certificate not reloaded: %s" % error, file=sys.stderr)

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))


def main(argv: Optional[List[str]] = None) -> None:  # pragma: no cover (binds a port)
    from twisted.internet import reactor

    cert, key, passwd_file, template, *rest = sys.argv[1:] if argv is None else argv
    tls = ReloadableServerTLS(cert, key)
    factory = make_factory(passwd_file, template, tls)
    listen_pop3s(reactor, rest[0] if rest else "tcp:995", factory, tls)
    reload_certificate_on_sighup(reactor, tls)
    reactor.run()


if __name__ == "__main__":
    main()
