"""Mailbox backends: each provides ``IMailboxStore`` (open + lock a maildrop) and ``IMailbox``."""

from __future__ import annotations

import re
from typing import Any

from twisted_pop3ng._redact import redact
from twisted_pop3ng.errors import POP3Error

#: Deprecated (kept for one release): ``--mailbox`` schemes as ``"scheme": "module:callable"``, the
#: callable building a store from the text after ``scheme:``. Consulted only for a scheme no
#: :class:`~twisted_pop3ng.interfaces.IMailboxStoreFactory` plugin provides; write a plugin instead
#: (:mod:`twisted_pop3ng.mailbox.plugins`).
SCHEMES = {
    "maildir": "twisted_pop3ng.mailbox.maildir:MaildirStore",
    "memory": "twisted_pop3ng.mailbox.memory:MemoryStore.from_spec",
}
#: SCHEMES entries that ship with pop3ng: using them (the drop-in was not found) warns nobody.
_BUILTIN_SCHEMES = frozenset(SCHEMES.items())


class MailboxSpecError(ValueError):
    """An unusable ``--mailbox`` value; the text is meant for the command line."""


def store_from_spec(spec: str) -> Any:
    """Build a store from a ``--mailbox`` value such as ``maildir:/var/mail/{user}/Maildir``.

    The scheme (before the first colon) names an ``IMailboxStoreFactory`` plugin; the rest goes to
    its ``makeStore``. A ``ValueError`` from there means the rest is unusable.
    """
    from twisted_pop3ng.mailbox.plugins import mailbox_store_factories

    scheme, sep, rest = spec.partition(":")
    if not sep:
        raise MailboxSpecError("%r is not SCHEME:ARGUMENTS (e.g. maildir:/var/mail/{user}/Maildir)"
                               % (spec,))
    factories = mailbox_store_factories()
    factory = factories.get(scheme)
    if factory is not None:
        return factory.makeStore(rest)
    if scheme in SCHEMES:
        return _from_deprecated_schemes(scheme, rest)
    raise MailboxSpecError("unknown mailbox scheme %r (known: %s)"
                           % (scheme, ", ".join(sorted(set(factories) | set(SCHEMES)))))


def _from_deprecated_schemes(scheme: str, rest: str) -> Any:
    import importlib
    import warnings

    if (scheme, SCHEMES[scheme]) not in _BUILTIN_SCHEMES:
        warnings.warn("--mailbox scheme %r comes from twisted_pop3ng.mailbox.SCHEMES, which is "
                      "deprecated: provide an IMailboxStoreFactory plugin instead" % (scheme,),
                      DeprecationWarning, stacklevel=3)
    module_name, _, attr = SCHEMES[scheme].partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target(rest)


def redact_spec(spec: str) -> str:
    """``spec`` for messages and logs: a ``password=`` value or a URI's ``user:password@`` hidden
    (a ``postgresql:`` DSN may carry one)."""
    return redact(spec)


_PLACEHOLDER = re.compile(r"\{[^{}/]*\}")


def check_user_template(template: str, kind: str, example: str) -> None:
    """A path template with ``{user}``, and no other ``{...}``: a misspelt ``{usr}`` or an
    unsupported ``{domain}`` would otherwise become a literal directory name for every user."""
    if "{user}" not in template:
        raise ValueError("the %s template needs a {user} placeholder, e.g. %s" % (kind, example))
    others = sorted(set(_PLACEHOLDER.findall(template)) - {"{user}"})
    if others:
        raise ValueError("the %s template has %s; the only placeholder is {user}"
                         % (kind, ", ".join(others)))


_UNSAFE_IN_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def safe_username(user: str) -> str:
    """Refuse user names that could escape a path template (``..``, ``/``, NUL, control chars)."""
    if not user or user in (".", "..") or _UNSAFE_IN_NAME.search(user):
        raise POP3Error("Invalid user name for this mailbox store", "SYS/PERM")
    return user
