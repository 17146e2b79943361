"""``--mailbox`` schemes as Twisted plugins: the built-in factories and the lookup of all of them.

A backend is an :class:`~twisted_pop3ng.interfaces.IMailboxStoreFactory` plugin (the ``--mailbox``
counterpart of strcred's ``ICheckerFactory``): a module-level object in a drop-in file under a
``twisted/plugins/`` directory on ``sys.path``. ``twisted/plugins/pop3ng.py`` holds the built-in
ones, instances of the classes below.

Rules of this module: it is imported by the drop-in, so whenever any ``twistd`` command looks for
plugins; keep it import-light (zope.interface, twisted.plugin and our interfaces only) and import a
store's module inside ``makeStore``.
"""

from __future__ import annotations

from typing import Any, Dict

from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_pop3ng.interfaces import IMailboxStoreFactory


@implementer(IPlugin, IMailboxStoreFactory)
class MaildirStoreFactory:
    """``--mailbox maildir:TEMPLATE``: :class:`~twisted_pop3ng.mailbox.maildir.MaildirStore`."""

    scheme = "maildir"
    help = ("Maildirs at a path template with {user}, created (mode 0700) at the first login, e.g. "
            "maildir:/var/mail/{user}/Maildir. UIDL is the file's base name; the maildrop lock is "
            "flock, so it holds across --workers processes.")

    def makeStore(self, argstring: str) -> Any:
        from twisted_pop3ng.mailbox.maildir.store import MaildirStore

        return MaildirStore(argstring)


@implementer(IPlugin, IMailboxStoreFactory)
class MemoryStoreFactory:
    """``--mailbox memory:``: :class:`~twisted_pop3ng.mailbox.memory.MemoryStore` (tests, demos)."""

    scheme = "memory"
    help = ("Maildrops in memory, empty at start and gone at exit, one per process (for tests); "
            "no arguments: memory:")

    def makeStore(self, argstring: str) -> Any:
        from twisted_pop3ng.mailbox.memory import MemoryStore

        return MemoryStore.from_spec(argstring)


@implementer(IPlugin, IMailboxStoreFactory)
class MboxStoreFactory:
    """``--mailbox mbox:TEMPLATE``: :class:`~twisted_pop3ng.mailbox.mbox.store.MboxStore`."""

    scheme = "mbox"
    help = ("Unix mbox files at a path template with {user}, e.g. mbox:/var/mail/{user}; locked with "
            "a dotlock and fcntl as Debian's MTAs and procmail lock them; UIDL is the message's "
            "X-UIDL header when present, else an identity kept beside the mbox. Options: "
            "?format=mboxo (MTA-style quoting; default mboxrd), &lock_timeout=SECONDS (default 30).")

    def makeStore(self, argstring: str) -> Any:
        from twisted_pop3ng.mailbox.mbox.store import MboxStore

        return MboxStore.from_spec(argstring)


@implementer(IPlugin, IMailboxStoreFactory)
class PostgresStoreFactory:
    """``--mailbox postgresql:DSN``: :class:`~twisted_pop3ng.mailbox.postgresql.store.PostgresStore`."""

    scheme = "postgresql"
    help = ("Maildrops in a PostgreSQL database (schema made by 'pop3ng db upgrade DSN'); DSN is a "
            "libpq connection string or URI, plus pop3ng's own pool_size=N, e.g. "
            "postgresql:'host=db dbname=mail user=pop3 pool_size=10'. Many servers may share one "
            "database: the maildrop lock is a PostgreSQL advisory lock.")

    def makeStore(self, argstring: str) -> Any:
        from twisted_pop3ng.mailbox.postgresql.store import PostgresStore

        return PostgresStore.from_spec(argstring)


def mailbox_store_factories() -> Dict[str, Any]:
    """Every ``--mailbox`` scheme the installed plugins provide, by scheme name.

    When two plugins claim one scheme the first one found wins (as strcred does for ``--auth``).
    """
    from twisted.plugin import getPlugins

    found: Dict[str, Any] = {}
    for factory in getPlugins(IMailboxStoreFactory):
        found.setdefault(str(factory.scheme), factory)
    return found
