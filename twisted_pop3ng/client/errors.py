"""Errors of the POP3 client: ``-ERR`` replies typed by response code, and local failures.

Each server error class also derives from the matching server-side class of
:mod:`twisted_pop3ng.errors`, so ``except MailboxInUse`` works on both sides.
"""

from __future__ import annotations

from typing import Optional

from twisted_pop3ng import wire
from twisted_pop3ng.errors import (AuthenticationFailed, LoginDelay, MailboxInUse, PermanentFailure,
                     POP3Error, TemporaryFailure)


class ServerError(POP3Error):
    """The server answered ``-ERR``; ``code`` is its response code (RFC 2449 §8) or None."""

    #: Advice for the user, added by the client where it knows a likely cause (e.g. a refused
    #: SCRAM when the fallback to PLAIN was not allowed); shown after the server's text.
    hint = ""

    def __init__(self, text: str, code: Optional[str] = None, command: str = "") -> None:
        super().__init__(text, code)
        self.command = command

    def __str__(self) -> str:
        code = "[%s] " % self.code if self.code else ""
        hint = " (%s)" % self.hint if self.hint else ""
        return printable("%s: -ERR %s%s%s" % (self.command or "server", code, self.text, hint))


def printable(text: str) -> str:
    """Control characters escaped: the server chose this text, and it may end up on a terminal
    (an escape sequence in ``-ERR`` must not retitle or drive it; finding F16). ``.text`` keeps
    the original."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


class InUseError(ServerError, MailboxInUse):
    """``[IN-USE]``: another session holds the maildrop; try again later."""


class LoginDelayError(ServerError, LoginDelay):
    """``[LOGIN-DELAY]``: logged in too recently."""


class AuthError(ServerError, AuthenticationFailed):
    """Authentication was refused (``[AUTH]``, or any ``-ERR`` to an authentication command)."""


class TemporaryError(ServerError, TemporaryFailure):
    """``[SYS/TEMP]``: a server-side failure that may go away."""


class PermanentError(ServerError, PermanentFailure):
    """``[SYS/PERM]``: a server-side failure that will not go away by retrying."""


_CODE_ERRORS = {"IN-USE": InUseError, "LOGIN-DELAY": LoginDelayError, "AUTH": AuthError,
                "SYS/TEMP": TemporaryError, "SYS/PERM": PermanentError}


class ProtocolError(Exception):
    """The server sent something that is not POP3; the connection is dropped."""


class TLSError(Exception):
    """The TLS handshake failed (certificate not trusted, wrong host name, ...); the text says why."""


class TLSVerificationError(TLSError):
    """The server's certificate was refused: not signed by a trusted CA, or not for the host name."""


class CapabilityError(Exception):
    """The server lacks something required (STLS, an acceptable authentication mechanism)."""


class StlsRequired(CapabilityError):
    """TLS was required (a ``pop3://`` URL without ``allow_plaintext``) and the server offers no STLS."""


class UidlUnsupported(CapabilityError):
    """The server does not implement UIDL, and the caller needs stable message identities."""


def error_for(status: wire.Status, command: str) -> ServerError:
    top = (status.code or "").split("/")[0].upper()
    cls = _CODE_ERRORS.get((status.code or "").upper()) or _CODE_ERRORS.get(top) or ServerError
    return cls(status.text, status.code, command)
