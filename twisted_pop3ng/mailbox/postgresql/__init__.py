"""Maildrops in PostgreSQL (``--mailbox postgresql:DSN``): many front ends on one database.

- :mod:`.spec` parses ``--mailbox``'s DSN (libpq's, plus our ``pool_size=N``);
- :mod:`.schema` holds the numbered migrations (``pop3ng db upgrade``) and the startup check;
- :mod:`.locks` keeps the maildrop locks: session advisory locks on one connection per process;
- :mod:`.chunks` streams a stored message out chunk by chunk, and in the same way into the database;
- :mod:`.maildrop` is one session's maildrop: the login snapshot, batched reads, the UPDATE;
- :mod:`.store` is the :class:`~twisted_pop3ng.interfaces.IMailboxStore` over all of that (and delivery);
- :mod:`.cli` is ``pop3ng db``.

docs/postgresql.rst explains the design choices (chunk table, threads, locks).
"""
