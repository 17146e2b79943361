"""twistd drop-in for twisted-pop3ng: ``twistd pop3ng``, the ``--auth passwd-file:PATH`` checker, the
``--mailbox maildir:``, ``mbox:``, ``postgresql:`` and ``memory:`` schemes and the ``--reactor=pop3ng-epoll`` reactor (what
``twistd pop3ng`` runs on unless told otherwise).

Every twistd command that looks for plugins (any ``--auth``, ``--help-auth``, ``--reactor``) imports
this file: keep it import-light, the real work is imported when a factory is used.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_pop3ng.mailbox.plugins import (MaildirStoreFactory, MboxStoreFactory, MemoryStoreFactory,
                                            PostgresStoreFactory)


@implementer(ICheckerFactory, IPlugin)
class _PasswdFileCheckerFactory:
    """``--auth passwd-file:PATH``; the checker (and its password hashing) is imported on use."""

    authType = "passwd-file"
    authHelp = ("A Dovecot-format passwd-file: user:{SCHEME}secret[:uid:gid:gecos:home:shell:extra]. "
                "Re-read when it changes.")
    argStringFormat = "Path to the passwd-file"
    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def generateChecker(self, argstring: str = ""):  # type: ignore[no-untyped-def]
        from twisted_pop3ng.auth.checkers import PasswdFileCheckerFactory

        return PasswdFileCheckerFactory().generateChecker(argstring)


pop3ng = ServiceMaker(
    "twisted-pop3ng", "twisted_pop3ng.tap", "A correct, streaming, secure POP3 server.", "pop3ng"
)
passwd_file = _PasswdFileCheckerFactory()
maildir_store = MaildirStoreFactory()
memory_store = MemoryStoreFactory()
mbox_store = MboxStoreFactory()
postgresql_store = PostgresStoreFactory()
pop3ng_epoll = Reactor(
    "pop3ng-epoll", "twisted_pop3ng.reactor",
    "Twisted's epoll reactor without the legacy log context per event (Linux).")
