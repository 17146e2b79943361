"""twistd drop-in for twisted-pop3ng: ``twistd pop3ng``, the ``--auth passwd-file:PATH`` checker and
the ``--reactor=pop3ng-epoll`` reactor (what ``twistd pop3ng`` runs on unless told otherwise)."""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

from twisted_pop3ng.auth.checkers import PasswdFileCheckerFactory

pop3ng = ServiceMaker(
    "twisted-pop3ng", "twisted_pop3ng.tap", "A correct, streaming, secure POP3 server.", "pop3ng"
)
passwd_file = PasswdFileCheckerFactory()
pop3ng_epoll = Reactor(
    "pop3ng-epoll", "twisted_pop3ng.reactor",
    "Twisted's epoll reactor without the legacy log context per event (Linux).")
