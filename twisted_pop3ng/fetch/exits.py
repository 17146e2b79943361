"""Exit codes of ``pop3ng fetch`` and the one table that maps a failure to its code and message.

Failures are told apart by exception type, never by their text.
"""

from __future__ import annotations

from typing import Tuple

from twisted.internet import defer, error as ierror

from twisted_pop3ng.client import errors as client_errors
from twisted_pop3ng.fetch.config import AccountError
from twisted_pop3ng.fetch.delivery import DeliveryError
from twisted_pop3ng.fetch.forward import ForwardDeferred
from twisted_pop3ng.fetch.run import FetchBusy
from twisted_pop3ng.fetch.state import StateError

__all__ = ["classify_exit", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_AUTH", "EXIT_TLS",
           "EXIT_CONNECTION", "EXIT_DELIVERY", "EXIT_TRY_LATER"]

EXIT_OK = 0
EXIT_ERROR = 1          # the server refused a command, or something unexpected
EXIT_USAGE = 2          # bad command line, no password
EXIT_AUTH = 3           # authentication failed / no acceptable mechanism
EXIT_TLS = 4            # TLS failed (certificate, host name, no STLS offered)
EXIT_CONNECTION = 5     # cannot connect, connection lost, timeout, protocol violation
EXIT_DELIVERY = 6       # local delivery or state file failed
EXIT_TRY_LATER = 7      # [IN-USE], [LOGIN-DELAY], [SYS/TEMP]: try again later


def classify_exit(error: BaseException) -> Tuple[int, str]:
    """Map a failure to ``(exit code, message)`` for the command line."""
    from OpenSSL import SSL

    while isinstance(error, defer.FirstError):
        error = error.subFailure.value
    if isinstance(error, FetchBusy):  # (our own lock, not the server)
        return EXIT_TRY_LATER, "try again later: %s" % error
    if isinstance(error, (client_errors.InUseError, client_errors.LoginDelayError)):
        return EXIT_TRY_LATER, "server busy, try again later: %s" % error
    if isinstance(error, client_errors.TemporaryError):
        return EXIT_TRY_LATER, "temporary failure on the server, try again later: %s" % error
    if isinstance(error, ForwardDeferred):
        return EXIT_TRY_LATER, "the MTA asked to try again later: %s" % error
    if isinstance(error, AccountError):
        return error.exit_code, str(error)
    if isinstance(error, client_errors.AuthError):
        return EXIT_AUTH, "authentication failed: %s" % error
    if isinstance(error, (client_errors.TLSError, SSL.Error)):
        return EXIT_TLS, "TLS failed: %s" % error
    if isinstance(error, client_errors.StlsRequired):
        return EXIT_TLS, str(error)
    if isinstance(error, client_errors.UidlUnsupported):
        return EXIT_ERROR, str(error)
    if isinstance(error, client_errors.CapabilityError):
        return EXIT_AUTH, str(error)  # no authentication method both sides accept
    if isinstance(error, (DeliveryError, StateError)):
        return EXIT_DELIVERY, str(error)
    if isinstance(error, client_errors.ProtocolError):
        return EXIT_CONNECTION, "protocol violation by the server: %s" % error
    if isinstance(error, (ierror.ConnectError, ierror.ConnectionLost, ierror.ConnectionDone,
                          ierror.TimeoutError, ierror.DNSLookupError)):
        return EXIT_CONNECTION, "connection failed: %s" % (str(error) or error.__class__.__name__)
    if isinstance(error, client_errors.ServerError):
        return EXIT_ERROR, "server refused: %s" % error
    if isinstance(error, OSError):
        return EXIT_DELIVERY, "local error: %s" % error
    return EXIT_ERROR, "%s: %s" % (error.__class__.__name__, error)


