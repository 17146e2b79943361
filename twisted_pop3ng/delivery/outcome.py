"""What became of one delivery, and how LMTP and ``pop3ng deliver`` say it.

Rules of this module: one table (:data:`KINDS`) gives each kind of outcome its LMTP reply
(RFC 2033 §4.2, enhanced status codes of RFC 3463) and its ``pop3ng deliver`` exit status
(``sysexits.h``); :func:`classify` is the only place an exception of a store is interpreted. A
failure a retry may cure is temporary (4xx, ``EX_TEMPFAIL``) so the MTA keeps the mail: when in
doubt -- an exception nobody expected -- it is temporary, never a bounce.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from twisted_pop3ng.errors import POP3Error, PermanentFailure

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_NOPERM = 77

DELIVERED = "delivered"
UNKNOWN_USER = "unknown-user"
TOO_BIG = "too-big"
NO_SPACE = "no-space"
OVER_QUOTA = "over-quota"
NO_PERMISSION = "no-permission"
TEMPORARY = "temporary"
PERMANENT = "permanent"

#: kind -> (LMTP code, enhanced status code, default text, sysexits status)
KINDS: Dict[str, Tuple[int, str, str, int]] = {
    DELIVERED: (250, "2.0.0", "Delivered", EX_OK),
    UNKNOWN_USER: (550, "5.1.1", "No such user here", EX_NOUSER),
    TOO_BIG: (552, "5.3.4", "Message too big", EX_DATAERR),
    NO_SPACE: (452, "4.3.1", "Insufficient system storage, try again later", EX_TEMPFAIL),
    OVER_QUOTA: (452, "4.2.2", "Mailbox full, try again later", EX_TEMPFAIL),
    # LMTP: temporary, the MTA keeps the mail until the administrator fixes the permissions. An
    # LDA runs as the recipient (Postfix's mailbox_command): there it is the sysexits meaning.
    NO_PERMISSION: (451, "4.3.0", "Mail store not writable, try again later", EX_NOPERM),
    TEMPORARY: (451, "4.3.0", "Temporary failure of the mail store, try again later", EX_TEMPFAIL),
    PERMANENT: (550, "5.2.0", "Mailbox unavailable", EX_CANTCREAT),
}

_ERRNO_KINDS = {
    errno.ENOSPC: NO_SPACE,
    errno.EDQUOT: OVER_QUOTA,
    errno.EACCES: NO_PERMISSION,
    errno.EPERM: NO_PERMISSION,
}


@dataclass(frozen=True)
class Outcome:
    """One recipient's result: its kind, the UIDL when delivered, the text for the client."""

    kind: str
    uid: Optional[str] = None
    text: str = ""
    #: False for an exception nobody expected (a bug): the caller logs it with its traceback.
    expected: bool = True

    @property
    def lmtp_code(self) -> int:
        return KINDS[self.kind][0]

    def lmtp_reply(self, address: str) -> bytes:
        """The reply line (CRLF included) for ``address``, e.g. ``250 2.0.0 <a@b> Delivered as …``."""
        code, status, default, _ = KINDS[self.kind]
        text = self.text or default
        if self.uid is not None:
            text = "%s as %s" % (text, self.uid)
        line = "%d %s <%s> %s" % (code, status, address, text)
        return line[:510].encode("ascii", "replace") + b"\r\n"

    @property
    def exit_status(self) -> int:
        return KINDS[self.kind][3]

    @property
    def description(self) -> str:
        return self.text or KINDS[self.kind][2]


def delivered(uid: str) -> Outcome:
    return Outcome(DELIVERED, uid=uid)


def classify(error: BaseException) -> Outcome:
    """The outcome of a delivery that raised ``error``."""
    if isinstance(error, PermanentFailure):
        return Outcome(PERMANENT, text=error.text)
    if isinstance(error, POP3Error):
        return Outcome(PERMANENT if error.code == PermanentFailure.code else TEMPORARY, text=error.text)
    if isinstance(error, OSError):
        kind = _ERRNO_KINDS.get(error.errno or 0, TEMPORARY)
        reason = error.strerror or type(error).__name__
        return Outcome(kind, text="%s (%s)" % (KINDS[kind][2], reason))
    return Outcome(TEMPORARY, expected=False)
