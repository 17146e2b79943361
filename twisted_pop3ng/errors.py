"""Errors raised by backends, checkers and the protocol, and the one table that maps them to ``-ERR``.

A backend or checker raises one of these; the server turns it into ``-ERR [CODE] text`` through
:func:`error_reply`. Anything else is logged and answered with a generic ``-ERR [SYS/TEMP]``: exception
text never reaches the client.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Optional, Tuple

from twisted.cred.error import LoginDenied, UnauthorizedLogin


class POP3Error(Exception):
    """An error with a response code (RFC 2449 §8, RFC 3206) and text that is safe to send."""

    code: Optional[str] = None
    text: str = "Command failed"

    def __init__(self, text: Optional[str] = None, code: Optional[str] = None) -> None:
        if text is not None:
            self.text = text
        if code is not None:
            self.code = code
        super().__init__(self.text)


class MailboxInUse(POP3Error):
    code = "IN-USE"
    text = "Mailbox is locked by another session"


class LoginDelay(POP3Error):
    code = "LOGIN-DELAY"
    text = "Logged in too recently, try again later"


class AuthenticationFailed(POP3Error):
    code = "AUTH"
    text = "Authentication failed"


class TemporaryFailure(POP3Error):
    code = "SYS/TEMP"
    text = "Temporary server failure, try again later"


class PermanentFailure(POP3Error):
    code = "SYS/PERM"
    text = "Permanent server failure"


class MessageVanished(PermanentFailure):
    text = "Message was removed from the mailbox by another process"


class NoSuchMessage(POP3Error):
    text = "No such message"


class MessageDeleted(POP3Error):
    text = "Message is deleted"


class BadCommand(POP3Error):
    """The client misused the protocol (wrong state, bad arguments)."""


#: errno values the machine causes, not a bug of ours (a full disk, a quota, descriptors or memory
#: running out, a failing or read-only disk, permissions): the admin needs one line saying what
#: and where, not a traceback.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO,
                       errno.EROFS, errno.EACCES, errno.EPERM,
                       # a maildrop's directory replaced by a symlink, a file or a FIFO meanwhile
                       errno.ELOOP, errno.ENOTDIR, errno.EISDIR}

#: errno values that will not go away by retrying.
_PERMANENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ELOOP}


def classify(error: BaseException) -> Tuple[Optional[str], str, bool]:
    """Map an exception to ``(code, text, expected)``; ``expected`` False means "log it"."""
    if isinstance(error, POP3Error):
        return error.code, error.text, True
    if isinstance(error, (UnauthorizedLogin, LoginDenied)):
        return AuthenticationFailed.code, AuthenticationFailed.text, True
    if isinstance(error, FileNotFoundError):
        return MessageVanished.code, MessageVanished.text, True
    if isinstance(error, OSError):
        if error.errno in _PERMANENT_ERRNOS:
            return PermanentFailure.code, "Mailbox storage is not accessible", False
        return TemporaryFailure.code, "Mailbox storage failed, try again later", False
    return TemporaryFailure.code, "Internal server error, try again later", False


def environment_problem(error: BaseException) -> Optional[str]:
    """One line for an ``OSError`` the machine caused (see ``_ENVIRONMENT_ERRNOS``), e.g. ``"No
    space left on device: '/var/mail/alice/Maildir/pop3ng.lock'"``; None for anything else."""
    if not isinstance(error, OSError) or error.errno not in _ENVIRONMENT_ERRNOS:
        return None
    text = os.strerror(error.errno)
    return "%s: %r" % (text, error.filename) if error.filename is not None else text


def log_failure(log: Any, message: str, failure: Any, **fields: Any) -> None:
    """Log a failure: a problem of the machine (:func:`environment_problem`) or a
    :class:`POP3Error` a backend raised on purpose as one warning line, anything else -- a bug
    of ours -- with its traceback."""
    error = failure.value
    problem = environment_problem(error)
    if problem is None and isinstance(error, POP3Error):  # raised on purpose: it says what
        problem = "[%s] %s" % (error.code, error.text) if error.code else error.text
    if problem is None:
        log.failure(message, failure, **fields)
    else:
        log.warn(message + ": {problem}", problem=problem, **fields)
