"""The POP3 server: the session state machine and its factory.

Rules of this package:

* :mod:`.states` is the only place the session state changes are written (a table);
* :mod:`.registry` holds which verbs exist, in which states, and what CAPA says -- one
  :class:`~.registry.CommandSet` per factory; :mod:`.verbs` (RFC 1939) and :mod:`.auth_verbs`
  (STLS, AUTH, APOP, UTF8) fill it;
* :mod:`.protocol` runs a session: dispatch, login orchestration, sending messages;
* :mod:`.io` is how lines come in and replies go out (batching, backpressure, streaming,
  timeouts) through public Twisted APIs; faster senders are injected from outside
  (:mod:`twisted_pop3ng.fastpath`), never imported here;
* :mod:`.policy` holds the security policy and abuse limits, :mod:`.realm` the cred realm;
* the server never touches files: messages come from the ``IMailbox`` avatar.

Today's names stay importable from here.
"""

from twisted_pop3ng.server.protocol import (CLOSE_GRACE, DEFAULT_COMMANDS, QUIT_CLOSE_GRACE,
                                            POP3ServerFactory, POP3ServerProtocol, ServerConfig,
                                            command)
from twisted_pop3ng.server.realm import MailboxRealm
from twisted_pop3ng.server.registry import CommandSet, Handler
from twisted_pop3ng.server.states import AUTHORIZATION, TRANSACTION, TRANSITIONS, UPDATE

__all__ = ["POP3ServerFactory", "POP3ServerProtocol", "ServerConfig", "command", "CommandSet",
           "Handler", "DEFAULT_COMMANDS", "MailboxRealm", "AUTHORIZATION", "TRANSACTION", "UPDATE",
           "TRANSITIONS", "CLOSE_GRACE", "QUIT_CLOSE_GRACE"]
