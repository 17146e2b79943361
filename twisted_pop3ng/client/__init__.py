"""The Deferred POP3 client.

Rules of this package: it imports nothing of the server, the mailbox stores or the fast path (an
import-linter contract holds this); :mod:`.protocol` is the client protocol (a FIFO of pending
commands, pipelining, streaming), :mod:`.login` picks and runs an authentication method,
:mod:`.errors` maps ``-ERR [CODE]`` replies to exceptions, :mod:`.connect` turns a ``pop3://`` or
``pop3s://`` URL or an endpoint into a secured, logged-in client.
"""

from twisted_pop3ng.auth.sasl_client import SASLError
from twisted_pop3ng.client.connect import POP3URL, connect, parse_url
from twisted_pop3ng.client.errors import (AuthError, CapabilityError, InUseError, LoginDelayError,
                                          PermanentError, ProtocolError, ServerError,
                                          StlsRequired, TemporaryError, TLSError,
                                          TLSVerificationError, UidlUnsupported, error_for)
from twisted_pop3ng.client.protocol import DEFAULT_TIMEOUT, POP3Client, POP3ClientFactory

__all__ = ["POP3Client", "POP3ClientFactory", "connect", "parse_url", "POP3URL", "DEFAULT_TIMEOUT",
           "AuthError", "CapabilityError", "InUseError", "LoginDelayError", "PermanentError",
           "ProtocolError", "ServerError", "TemporaryError", "TLSError", "error_for",
           "StlsRequired", "UidlUnsupported", "TLSVerificationError", "SASLError"]
