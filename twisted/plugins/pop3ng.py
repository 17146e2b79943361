"""twistd drop-in for twisted-pop3ng: ``twistd pop3ng`` and the ``--auth passwd-file:PATH`` checker."""

from twisted.application.service import ServiceMaker

from twisted_pop3ng.cred import PasswdFileCheckerFactory

pop3ng = ServiceMaker(
    "twisted-pop3ng", "twisted_pop3ng.tap", "A correct, streaming, secure POP3 server.", "pop3ng"
)
passwd_file = PasswdFileCheckerFactory()
