"""``--mailbox`` schemes are ``IMailboxStoreFactory`` Twisted plugins: the built-in ones, a third-party
drop-in file, ``--help-mailbox``, the deprecated ``SCHEMES`` table, and an import-light drop-in."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import uuid
from typing import Any, Dict

import twisted.plugins
from twisted.python import usage
from twisted.trial import unittest

from twisted_pop3ng import mailbox
from twisted_pop3ng.interfaces import IMailboxStore, IMailboxStoreFactory
from twisted_pop3ng.mailbox import MailboxSpecError, store_from_spec
from twisted_pop3ng.mailbox.maildir import MaildirStore
from twisted_pop3ng.mailbox.memory import MemoryStore
from twisted_pop3ng.mailbox.plugins import mailbox_store_factories
from twisted_pop3ng.service.options import Options

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DROP_IN = """
from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_pop3ng.interfaces import IMailboxStoreFactory


class PigeonStore:
    def __init__(self, loft):
        self.loft = loft

    def open_mailbox(self, user):
        raise NotImplementedError


@implementer(IPlugin, IMailboxStoreFactory)
class PigeonStoreFactory:
    scheme = "%(scheme)s"
    help = "Mail by carrier pigeon from the loft ARGS (a test backend)."

    def makeStore(self, argstring):
        return PigeonStore(argstring)


pigeon = PigeonStoreFactory()
"""


class DropInMixin:
    def add_drop_in(self: Any) -> str:
        """Write a third-party backend as one file in a new ``twisted/plugins`` directory on the
        path, as ``pip install`` of such a backend would; return its scheme."""
        scheme = "pigeon" + uuid.uuid4().hex[:8]
        site = os.path.abspath(self.mktemp())
        plugins = os.path.join(site, "twisted", "plugins")
        os.makedirs(plugins)  # no __init__.py: twisted.plugins gathers all such directories
        module = "pop3ng_test_" + scheme
        with open(os.path.join(plugins, module + ".py"), "w") as f:
            f.write(DROP_IN % {"scheme": scheme})
        # What twisted.plugins does for every sys.path entry when it is first imported.
        self.patch(sys, "path", [site] + sys.path)
        self.patch(twisted.plugins, "__path__", [plugins] + list(twisted.plugins.__path__))
        self.addCleanup(sys.modules.pop, "twisted.plugins." + module, None)
        return scheme


class BuiltInSchemeTests(unittest.TestCase):
    def test_the_built_in_schemes_are_plugins(self) -> None:
        factories = mailbox_store_factories()
        self.assertIn("maildir", factories)
        self.assertIn("memory", factories)
        for factory in factories.values():
            self.assertTrue(IMailboxStoreFactory.providedBy(factory))

    def test_built_in_schemes_need_no_schemes_table(self) -> None:
        self.patch(mailbox, "SCHEMES", {})
        store = store_from_spec("maildir:/var/mail/{user}/Maildir")
        self.assertIsInstance(store, MaildirStore)
        self.assertEqual(store.template, "/var/mail/{user}/Maildir")
        self.assertIsInstance(store_from_spec("memory:"), MemoryStore)

    def test_every_built_in_store_provides_the_store_interface(self) -> None:
        for spec in ("maildir:/x/{user}", "memory:"):
            self.assertTrue(IMailboxStore.providedBy(store_from_spec(spec)), spec)

    def test_unknown_scheme_names_it_and_the_known_ones(self) -> None:
        error = self.assertRaises(MailboxSpecError, store_from_spec, "mbox9:/var/mail/{user}")
        self.assertIn("'mbox9'", str(error))
        self.assertIn("maildir", str(error))

    def test_a_spec_without_scheme_is_refused(self) -> None:
        error = self.assertRaises(MailboxSpecError, store_from_spec, "/var/mail/{user}")
        self.assertIn("SCHEME:", str(error))

    def test_a_bad_argument_is_a_value_error_from_the_backend(self) -> None:
        error = self.assertRaises(ValueError, store_from_spec, "maildir:/var/mail/Maildir")
        self.assertNotIsInstance(error, MailboxSpecError)
        self.assertIn("{user}", str(error))


class DeprecatedSchemesTests(unittest.TestCase):
    def test_a_scheme_registered_in_the_table_still_works_and_warns(self) -> None:
        legacy = "twisted_pop3ng.mailbox.memory:MemoryStore.from_spec"
        self.patch(mailbox, "SCHEMES", dict(mailbox.SCHEMES, legacy=legacy))
        self.assertIsInstance(store_from_spec("legacy:"), MemoryStore)
        warnings = self.flushWarnings()
        self.assertEqual([w["category"] for w in warnings], [DeprecationWarning])
        self.assertIn("IMailboxStoreFactory", warnings[0]["message"])

    def test_built_in_table_entries_do_not_warn(self) -> None:
        # If the drop-in is missing (a broken install), the built-in entries still serve.
        import twisted_pop3ng.mailbox.plugins as plugins

        self.patch(plugins, "mailbox_store_factories", lambda: {})
        self.assertIsInstance(store_from_spec("maildir:/x/{user}"), MaildirStore)
        self.assertEqual(self.flushWarnings(), [])


class ThirdPartyDropInTests(DropInMixin, unittest.TestCase):
    def test_a_third_party_backend_is_one_drop_in_file(self) -> None:
        scheme = self.add_drop_in()
        store = store_from_spec(scheme + ":/var/lofts/{user}")
        self.assertEqual(type(store).__name__, "PigeonStore")
        self.assertEqual(store.loft, "/var/lofts/{user}")

    def test_help_mailbox_lists_the_built_in_and_the_drop_in_schemes(self) -> None:
        scheme = self.add_drop_in()
        out = help_mailbox_output(self)
        self.assertIn("\n  maildir\n", out)
        self.assertIn("maildir:/var/mail/{user}/Maildir", out)
        self.assertIn("\n  %s\n" % scheme, out)
        self.assertIn("carrier pigeon", out)

    def test_the_drop_in_scheme_works_from_the_command_line(self) -> None:
        scheme = self.add_drop_in()
        users = os.path.abspath(self.mktemp())
        with open(users, "w") as f:
            f.write("alice:{PLAIN}x\n")
        options = Options()
        options.parseOptions(["--auth", "passwd-file:" + users, "--mailbox", scheme + ":/lofts"])
        self.assertEqual(options["store"].loft, "/lofts")


def help_mailbox_output(case: unittest.TestCase, legacy: Dict[str, str] = {}) -> str:
    options = Options()
    options.mailbox_output = io.StringIO()
    case.patch(mailbox, "SCHEMES", dict(mailbox.SCHEMES, **legacy))
    error = case.assertRaises(SystemExit, options.parseOptions, ["--help-mailbox"])
    case.assertEqual(error.code, 0)
    return options.mailbox_output.getvalue()


class CommandLineTests(unittest.TestCase):
    def parse(self, mailbox_spec: str) -> Options:
        users = os.path.abspath(self.mktemp())
        with open(users, "w") as f:
            f.write("alice:{PLAIN}x\n")
        options = Options()
        options.parseOptions(["--auth", "passwd-file:" + users, "--mailbox", mailbox_spec])
        return options

    def test_unknown_scheme_is_a_usage_error_pointing_at_help_mailbox(self) -> None:
        error = self.assertRaises(usage.UsageError, self.parse, "mbox9:/var/mail/{user}")
        self.assertIn("mbox9", str(error))
        self.assertIn("--help-mailbox", str(error))

    def test_a_bad_argument_is_a_usage_error(self) -> None:
        error = self.assertRaises(usage.UsageError, self.parse, "maildir:/var/mail/Maildir")
        self.assertIn("{user}", str(error))

    def test_help_mailbox_also_lists_deprecated_table_schemes(self) -> None:
        out = help_mailbox_output(self, {"legacy": "x:y"})
        self.assertIn("\n  legacy\n", out)
        self.assertIn("deprecated", out)
        self.assertEqual(out.count("\n  maildir\n"), 1)


class DropInIsImportLightTests(unittest.TestCase):
    """Every ``twistd`` that looks for plugins (``--auth``, ``--reactor``...) imports our drop-in."""

    def test_importing_the_drop_in_loads_no_backend_checker_or_reactor(self) -> None:
        code = textwrap.dedent("""
            import sys
            import twisted.plugins.pop3ng
            heavy = ["twisted_pop3ng.auth.checkers", "twisted_pop3ng.auth.passwords",
                     "twisted_pop3ng.mailbox.maildir", "twisted_pop3ng.mailbox.memory",
                     "twisted_pop3ng.server", "twisted.internet.reactor"]
            print(sorted(name for name in heavy if name in sys.modules))
        """)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPOSITORY,
                                timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), b"[]", result.stderr)

    def test_the_passwd_file_plugin_describes_and_builds_the_real_checker(self) -> None:
        from twisted.cred import strcred

        from twisted_pop3ng.auth.checkers import PasswdFileChecker, PasswdFileCheckerFactory

        plugin = strcred.findCheckerFactory("passwd-file")
        real = PasswdFileCheckerFactory()
        for name in ("authType", "authHelp", "argStringFormat", "credentialInterfaces"):
            self.assertEqual(getattr(plugin, name), getattr(real, name), name)
        users = os.path.abspath(self.mktemp())
        with open(users, "w") as f:
            f.write("alice:{PLAIN}x\n")
        self.assertIsInstance(strcred.makeChecker("passwd-file:" + users), PasswdFileChecker)
        self.assertRaises(strcred.InvalidAuthArgumentString, strcred.makeChecker, "passwd-file:")
