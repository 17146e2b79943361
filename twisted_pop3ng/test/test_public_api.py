"""The public API's safety net: every name the documentation gave before the package moved into
subpackages still imports from its documented path and is the same object as at its new home; the
old module paths warn and name their replacement; the permanent paths do not warn; ``import
twisted_pop3ng`` and the twistd plugin stay light."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from typing import Any, Dict, List, Tuple

from twisted.trial import unittest

#: (documented module, name, module of its new home): every ``twisted_pop3ng.`` name the docs and
#: README gave before the move (docs/*.rst, README.rst), at the path they gave it.
DOCUMENTED: List[Tuple[str, str, str]] = [
    ("twisted_pop3ng.server", "POP3ServerFactory", "twisted_pop3ng.server.protocol"),
    ("twisted_pop3ng.server", "POP3ServerProtocol", "twisted_pop3ng.server.protocol"),
    ("twisted_pop3ng.server", "ServerConfig", "twisted_pop3ng.server.protocol"),
    ("twisted_pop3ng.realm", "MailboxRealm", "twisted_pop3ng.server.realm"),
    ("twisted_pop3ng.policy", "SecurityConfig", "twisted_pop3ng.server.policy"),
    ("twisted_pop3ng.mailbox.maildir", "MaildirStore", "twisted_pop3ng.mailbox.maildir.store"),
    ("twisted_pop3ng.mailbox.maildir", "MaildirMailbox", "twisted_pop3ng.mailbox.maildir.store"),
    ("twisted_pop3ng.mailbox.memory", "MemoryStore", "twisted_pop3ng.mailbox.memory"),
    ("twisted_pop3ng.mailbox", "SCHEMES", "twisted_pop3ng.mailbox"),
    ("twisted_pop3ng.interfaces", "IMailbox", "twisted_pop3ng.interfaces"),
    ("twisted_pop3ng.interfaces", "IMailboxStore", "twisted_pop3ng.interfaces"),
    ("twisted_pop3ng.interfaces", "IMaildropLock", "twisted_pop3ng.interfaces"),
    ("twisted_pop3ng.interfaces", "MessageInfo", "twisted_pop3ng.model"),
    ("twisted_pop3ng.interfaces", "MessageTable", "twisted_pop3ng.model"),
    ("twisted_pop3ng.errors", "POP3Error", "twisted_pop3ng.errors"),
    ("twisted_pop3ng.errors", "MailboxInUse", "twisted_pop3ng.errors"),
    ("twisted_pop3ng.errors", "MessageVanished", "twisted_pop3ng.errors"),
    ("twisted_pop3ng.errors", "TemporaryFailure", "twisted_pop3ng.errors"),
    ("twisted_pop3ng.errors", "PermanentFailure", "twisted_pop3ng.errors"),
    ("twisted_pop3ng.errors", "LoginDelay", "twisted_pop3ng.errors"),
    ("twisted_pop3ng.wire", "wire_size", "twisted_pop3ng.wire.message"),
    ("twisted_pop3ng.wire", "MessageEncoder", "twisted_pop3ng.wire.message"),
    ("twisted_pop3ng.wire", "Command", "twisted_pop3ng.wire.command"),
    ("twisted_pop3ng.tls", "ReloadableServerTLS", "twisted_pop3ng.tls.server"),
    ("twisted_pop3ng.client", "connect", "twisted_pop3ng.client.connect"),
    ("twisted_pop3ng.client", "POP3Client", "twisted_pop3ng.client.protocol"),
    ("twisted_pop3ng.client", "ServerError", "twisted_pop3ng.client.errors"),
    ("twisted_pop3ng.client", "InUseError", "twisted_pop3ng.client.errors"),
    ("twisted_pop3ng.client", "LoginDelayError", "twisted_pop3ng.client.errors"),
    ("twisted_pop3ng.client", "AuthError", "twisted_pop3ng.client.errors"),
    ("twisted_pop3ng.client", "TemporaryError", "twisted_pop3ng.client.errors"),
    ("twisted_pop3ng.client", "PermanentError", "twisted_pop3ng.client.errors"),
    ("twisted_pop3ng.client", "TLSError", "twisted_pop3ng.client.errors"),
    ("twisted_pop3ng.client", "CapabilityError", "twisted_pop3ng.client.errors"),
    ("twisted_pop3ng.client", "ProtocolError", "twisted_pop3ng.client.errors"),
    ("twisted_pop3ng.oauth", "issue_token", "twisted_pop3ng.auth.oauth"),
    ("twisted_pop3ng.oauth", "HMACTokenValidator", "twisted_pop3ng.auth.oauth"),
    ("twisted_pop3ng.oauth", "ITokenValidator", "twisted_pop3ng.auth.oauth"),
    ("twisted_pop3ng.reactor", "LeanEPollReactor", "twisted_pop3ng.fastpath.reactor"),
    ("twisted_pop3ng.server_port", "LeanServer", "twisted_pop3ng.fastpath.port"),
    ("twisted_pop3ng.server_port", "LeanPort", "twisted_pop3ng.fastpath.port"),
    ("twisted_pop3ng.server_port", "LeanTCPReactor", "twisted_pop3ng.fastpath.port"),
]

#: Old module path -> its new home (the deprecation shims).
MOVED: Dict[str, str] = {
    "twisted_pop3ng.server_auth": "twisted_pop3ng.server.auth_verbs",
    "twisted_pop3ng.server_io": "twisted_pop3ng.server.io",
    "twisted_pop3ng.server_port": "twisted_pop3ng.fastpath.port",
    "twisted_pop3ng.policy": "twisted_pop3ng.server.policy",
    "twisted_pop3ng.realm": "twisted_pop3ng.server.realm",
    "twisted_pop3ng.cred": "twisted_pop3ng.auth.checkers",
    "twisted_pop3ng.sasl": "twisted_pop3ng.auth.sasl_server",
    "twisted_pop3ng.sasl_client": "twisted_pop3ng.auth.sasl_client",
    "twisted_pop3ng.client_auth": "twisted_pop3ng.client.login",
    "twisted_pop3ng.client_errors": "twisted_pop3ng.client.errors",
    "twisted_pop3ng.connect": "twisted_pop3ng.client.connect",
    "twisted_pop3ng.fetchstate": "twisted_pop3ng.fetch.state",
    "twisted_pop3ng.tap_security": "twisted_pop3ng.service.security_options",
    "twisted_pop3ng.demo": "twisted_pop3ng.service.demo",
    "twisted_pop3ng.passwords": "twisted_pop3ng.auth.passwords",
    "twisted_pop3ng.cram": "twisted_pop3ng.auth.cram",
    "twisted_pop3ng.oauth": "twisted_pop3ng.auth.oauth",
    "twisted_pop3ng.workers": "twisted_pop3ng.service.workers",
    "twisted_pop3ng.mailbox.maildir_index": "twisted_pop3ng.mailbox.maildir.index",
    "twisted_pop3ng.mailbox.maildir_listing": "twisted_pop3ng.mailbox.maildir.listing",
    "twisted_pop3ng.mailbox.maildir_measure": "twisted_pop3ng.mailbox.maildir.measure",
}

#: Paths that stay for good: importing them must not warn.
PERMANENT = [
    "twisted_pop3ng", "twisted_pop3ng.tap", "twisted_pop3ng.reactor", "twisted_pop3ng.server",
    "twisted_pop3ng.client", "twisted_pop3ng.wire", "twisted_pop3ng.mailbox",
    "twisted_pop3ng.mailbox.maildir", "twisted_pop3ng.mailbox.memory", "twisted_pop3ng.fetch",
    "twisted_pop3ng.tls", "twisted_pop3ng.interfaces", "twisted_pop3ng.errors",
    "twisted_pop3ng.testing", "twisted_pop3ng.delivery",
]


def fresh_import(name: str) -> Tuple[Any, List[warnings.WarningMessage]]:
    """Import ``name`` anew (its dependencies stay loaded), recording every warning."""
    saved = sys.modules.pop(name, None)
    parent, _, child = name.rpartition(".")
    parent_module = sys.modules.get(parent)
    saved_attr = getattr(parent_module, child, None) if parent_module is not None else None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(name)
    finally:
        # Put the original back: other tests hold references to its objects.
        if saved is not None:
            sys.modules[name] = saved
            if parent_module is not None and saved_attr is not None:
                setattr(parent_module, child, saved_attr)
    return module, caught


def deprecations(caught: List[warnings.WarningMessage]) -> List[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]


class DocumentedNamesTests(unittest.TestCase):
    def test_documented_names_are_the_new_objects(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for path, name, home in DOCUMENTED:
                old = getattr(importlib.import_module(path), name)
                new = getattr(importlib.import_module(home), name)
                self.assertIs(old, new, "%s.%s is not %s.%s" % (path, name, home, name))

    def test_top_level_names(self) -> None:
        import twisted_pop3ng

        for name in twisted_pop3ng.__all__:
            self.assertIsNotNone(getattr(twisted_pop3ng, name), name)
        from twisted_pop3ng.server.protocol import POP3ServerFactory
        from twisted_pop3ng.mailbox.maildir.store import MaildirStore

        self.assertIs(twisted_pop3ng.POP3ServerFactory, POP3ServerFactory)
        self.assertIs(twisted_pop3ng.MaildirStore, MaildirStore)
        with self.assertRaises(AttributeError):
            twisted_pop3ng.NoSuchName  # noqa: B018


class DeprecatedPathsTests(unittest.TestCase):
    def test_old_paths_warn_and_name_the_new(self) -> None:
        for old, new in MOVED.items():
            module, caught = fresh_import(old)
            messages = deprecations(caught)
            self.assertTrue(any(old in m and new in m for m in messages),
                            "%s: no DeprecationWarning naming %s (got %r)" % (old, new, messages))

    def test_shims_reexport_their_new_module(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for old, new in MOVED.items():
                shim, target = importlib.import_module(old), importlib.import_module(new)
                names = getattr(shim, "__all__", [])
                self.assertTrue(names, "%s exports nothing" % (old,))
                for name in names:
                    self.assertIs(getattr(shim, name), getattr(target, name), "%s.%s" % (old, name))

    def test_permanent_paths_do_not_warn(self) -> None:
        for name in PERMANENT:
            _, caught = fresh_import(name)
            self.assertEqual(deprecations(caught), [], name)


class ImportLightTests(unittest.TestCase):
    def loaded_after(self, statement: str) -> List[str]:
        code = ("import sys\n%s\nprint('\\n'.join(sorted(sys.modules)))" % statement)
        out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code],
                             check=True, capture_output=True, text=True).stdout
        return out.split()

    def test_package_import_is_light(self) -> None:
        loaded = self.loaded_after("import twisted_pop3ng")
        for heavy in ("twisted.internet.reactor", "twisted_pop3ng.server", "twisted.internet"):
            self.assertNotIn(heavy, loaded)

    def test_plugin_import_is_light(self) -> None:
        loaded = self.loaded_after("import twisted.plugins.pop3ng")
        for heavy in ("twisted.internet.reactor", "twisted_pop3ng.server",
                      "twisted_pop3ng.server.protocol", "twisted_pop3ng.fastpath.reactor"):
            self.assertNotIn(heavy, loaded)


class DocsReferencesTests(unittest.TestCase):
    """Every ``twisted_pop3ng.`` name the documentation shows today resolves."""

    def test_every_dotted_name_in_the_docs_resolves(self) -> None:
        import re
        from pathlib import Path

        root = Path(__file__).resolve().parents[2]
        pages = sorted((root / "docs").glob("*.rst")) + [root / "README.rst"]
        if not (root / "docs").is_dir():
            raise unittest.SkipTest("no docs/ here (an installed package, not a checkout)")
        names = set()
        for page in pages:
            text = page.read_text(encoding="utf-8")
            names.update(re.findall(r"\btwisted_pop3ng(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text))
            for module, imported in re.findall(
                    r"from (twisted_pop3ng[\w.]*) import ([\w, ]+)", text):
                names.update("%s.%s" % (module, name.strip()) for name in imported.split(","))
        self.assertTrue(names)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for dotted in sorted(names):
                self.assertTrue(resolves(dotted), "documented but not importable: %s" % (dotted,))


def resolves(dotted: str) -> bool:
    """``a.b.c``: a module, or an attribute (chain) of the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False
