"""The backend conformance suite (:mod:`twisted_pop3ng.testing.conformance`) for ``postgresql:``,
against a real PostgreSQL (:mod:`twisted_pop3ng.testing.postgresql`), a fresh database per test."""

from __future__ import annotations

from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from twisted_pop3ng.mailbox.postgresql.store import PostgresStore
from twisted_pop3ng.testing.conformance import (CrossProcessConformanceMixin, ExternalRemovalConformanceMixin,
                                                StoreConformanceMixin)
from twisted_pop3ng.testing.postgresql import drop_database, fresh_database


class PostgresConformanceTests(StoreConformanceMixin, CrossProcessConformanceMixin,
                               ExternalRemovalConformanceMixin, unittest.TestCase):
    def make_store(self) -> PostgresStore:
        self.dsn = fresh_database() + " pool_size=4"
        self.spec = "postgresql:" + self.dsn
        store = PostgresStore.from_spec(self.dsn)
        self.addCleanup(drop_database, self.dsn.replace(" pool_size=4", ""))
        self.addCleanup(store.stop)
        return store

    def remove_behind_back(self, store: PostgresStore, user: str, uid: str) -> Any:
        """``DELETE`` the message's row as an administrator would (the chunks go with it)."""
        message_id = int(uid.rpartition(".")[2])

        def delete() -> None:
            with store.connection_pool().connection() as conn:
                conn.execute("DELETE FROM messages WHERE id = %s", (message_id,))
        return deferToThread(delete)
