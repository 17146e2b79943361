"""The documentation's generators: the option reference lists every option the code accepts, the
architecture diagram draws the real imports, the benchmark charts and table come from a results
file, and the whole site builds with ``-W`` (warnings are errors)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

from twisted.python import usage
from twisted.trial import unittest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
if not (DOCS / "_ext").is_dir():
    raise ImportError("docs/_ext is not here: these tests run from a checkout")
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))

import bench_results  # noqa: E402
import cli_reference  # noqa: E402
import import_graph  # noqa: E402
import interface_reference  # noqa: E402
import session_states  # noqa: E402

from benchmarks import plot  # noqa: E402
from twisted_pop3ng.service import abuse_options, security_options  # noqa: E402
from twisted_pop3ng.service.options import Options  # noqa: E402


class TwistdOptionsReferenceTests(unittest.TestCase):
    def test_every_option_listed_with_its_default(self) -> None:
        listed = {option.name: option for option, _ in cli_reference.usage_options(Options)}
        accepted = Options()
        # usage.Options' own table of long options: what `twistd pop3ng --NAME` accepts
        names = {name.rstrip("=") for name in accepted.longOpt}
        self.assertEqual(set(listed), names)
        parameters = {entry[0] for klass in type(accepted).__mro__ for entry in vars(klass).get("optParameters", ())}
        for name in parameters:
            self.assertEqual(listed[name].default, accepted.defaults[name], name)
            self.assertTrue(listed[name].takes_value, name)
        self.assertFalse(listed["demo"].takes_value)
        self.assertTrue(listed["listen"].repeatable)
        self.assertEqual(listed["listen"].metavar, "ENDPOINT")
        self.assertEqual(listed["idle-timeout"].rst()[0], ".. option:: --idle-timeout <SECONDS>")
        self.assertIn("   Default: ``600``.", listed["idle-timeout"].rst())

    def test_grouped_by_declaring_module(self) -> None:
        sections = {"twisted_pop3ng.service.security_options": "Security",
                    "twisted_pop3ng.service.abuse_options": "Abuse"}
        by_name = {option.name: cli_reference._declaring_section(source, sections)
                   for option, source in cli_reference.usage_options(Options)}
        for entry in security_options.OPT_FLAGS + security_options.OPT_PARAMETERS:
            self.assertEqual(by_name[entry[0]], "Security", entry[0])
        for entry in abuse_options.OPT_FLAGS + abuse_options.OPT_PARAMETERS:
            self.assertEqual(by_name[entry[0]], "Abuse", entry[0])
        self.assertIsNone(by_name["listen"])
        self.assertIsNone(by_name["mailbox"])

    def test_a_new_option_appears(self) -> None:
        class Extended(Options):
            optParameters = [["frobnicate", None, 3, "How *much* to frobnicate.", int]]

            def opt_shout(self, word: str) -> None:
                """Say WORD loudly."""

        listed = {option.name: option for option, _ in cli_reference.usage_options(Extended)}
        self.assertEqual(listed["frobnicate"].rst()[:3],
                         [".. option:: --frobnicate <N>", "", "   How \\*much\\* to frobnicate."])
        self.assertEqual(listed["shout"].rst()[:3], [".. option:: --shout <WORD>", "", "   Say WORD loudly."])
        self.assertIn("listen", listed)

    def test_short_options(self) -> None:
        class WithShort(usage.Options):
            optFlags = [["verbose", "v", "Say more."]]
            optParameters = [["port", "p", 110, "Port.", int]]

        listed = {option.name: option for option, _ in cli_reference.usage_options(WithShort)}
        self.assertEqual(listed["verbose"].rst()[0], ".. option:: -v, --verbose")
        self.assertEqual(listed["port"].rst()[0], ".. option:: -p <N>, --port <N>")


class BrokenReferenceTests(unittest.TestCase):
    """A reference that cannot be generated fails the -W build with a warning naming the problem,
    never with a crash or a silently empty page."""

    def build(self, body: str) -> subprocess.CompletedProcess:
        src = self.mktemp()
        os.makedirs(src)
        with open(os.path.join(src, "conf.py"), "w") as f:
            f.write("import sys\nsys.path[:0] = [%r, %r]\nextensions = ['cli_reference']\n"
                    % (str(DOCS / "_ext"), str(ROOT)))
        with open(os.path.join(src, "index.rst"), "w") as f:
            f.write("Options\n=======\n\n" + body)
        return subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", src,
                               os.path.join(src, "_build")], capture_output=True, text=True, timeout=300)

    def test_unknown_class(self) -> None:
        result = self.build(".. twistd-options:: twisted_pop3ng.service.options.NoSuchOptions\n")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("twistd-options: cannot read twisted_pop3ng.service.options.NoSuchOptions", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_unknown_section_module(self) -> None:
        result = self.build(".. twistd-options:: twisted_pop3ng.service.options.Options\n"
                            "   :sections: twisted_pop3ng.service.gone_options = Gone\n")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("No module named 'twisted_pop3ng.service.gone_options'", result.stderr)
        self.assertNotIn("Traceback", result.stderr)


class SubcommandReferenceTests(unittest.TestCase):
    def test_fetch_parser_captured(self) -> None:
        original = argparse.ArgumentParser.parse_known_args
        parser, text = cli_reference.subcommand_parser("fetch")
        self.assertIs(argparse.ArgumentParser.parse_known_args, original)  # put back
        assert parser is not None
        self.assertEqual(parser.prog, "pop3ng fetch")
        lines = cli_reference.argparse_rst(parser, "pop3ng fetch")
        options = [line for line in lines if line.startswith(".. option:: ")]
        # every argument the parser takes, once
        self.assertEqual(len(options), len([a for a in parser._actions if a.help != argparse.SUPPRESS]))
        self.assertIn(".. option:: --maildir <DIR>", options)
        self.assertIn(".. option:: url", options)
        timeout = lines.index(".. option:: --timeout <S>")
        self.assertIn("   Default: ``120``.", lines[timeout:timeout + 6])

    def test_passwd_parser_captured(self) -> None:
        parser, _ = cli_reference.subcommand_parser("passwd")
        assert parser is not None
        self.assertIn(".. option:: -s <SCHEME>, --scheme <SCHEME>", cli_reference.argparse_rst(parser, "pop3ng passwd"))


class ImportGraphTests(unittest.TestCase):
    def test_layers_from_setup_cfg(self) -> None:
        layers = import_graph.read_layers(str(ROOT / "setup.cfg"), "twisted_pop3ng")
        self.assertEqual(layers[0][0], "service")
        self.assertIn("wire", layers[-1])

    def test_real_imports(self) -> None:
        layers = import_graph.read_layers(str(ROOT / "setup.cfg"), "twisted_pop3ng")
        members = {m for layer in layers for m in layer}
        edges, sources = import_graph.layer_edges(str(ROOT), "twisted_pop3ng", members)
        self.assertIn(("service", "fastpath"), edges)
        self.assertIn(("server", "wire"), edges)
        self.assertNotIn(("client", "server"), edges)  # an import-linter contract
        self.assertFalse(any("/test/" in path for path in sources))

    def test_relative_imports_and_upward_arrows(self) -> None:
        root = self.mktemp()
        pkg = os.path.join(root, "pkg")
        os.makedirs(os.path.join(pkg, "high"))
        os.makedirs(os.path.join(pkg, "low"))
        files = {
            "__init__.py": "",
            "high/__init__.py": "from . import helper\n",
            "high/helper.py": "from ..low import thing\n",
            "low/__init__.py": "",
            "low/thing.py": "def f():\n    import pkg.high  # a function-level import counts too\n",
        }
        for name, text in files.items():
            with open(os.path.join(pkg, name), "w") as f:
                f.write(text)
        edges, _ = import_graph.layer_edges(root, "pkg", {"high", "low"})
        self.assertEqual(edges, {("high", "low"), ("low", "high")})
        dot = import_graph.dot_source([["high"], ["low"]], ["top", "bottom"], edges)
        self.assertIn('"low" -> "high" [color="#e03131"', dot)  # breaks the layering: red
        self.assertIn('"high" -> "low";', dot)
        result = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("<svg", result.stdout)


class SessionStatesTests(unittest.TestCase):
    def test_drawn_from_the_server_tables(self) -> None:
        from twisted_pop3ng.server import AUTHORIZATION, DEFAULT_COMMANDS, TRANSITIONS, UPDATE

        verbs = session_states.verbs_by_state(DEFAULT_COMMANDS.handlers)
        self.assertIn("RETR", verbs["TRANSACTION"])
        self.assertNotIn("RETR", verbs[AUTHORIZATION])
        dot = session_states.dot_source(TRANSITIONS, verbs, AUTHORIZATION)
        self.assertIn('"TRANSACTION" -> "UPDATE" [label="QUIT"];', dot)
        self.assertIn('"%s" -> closed [label="deletions committed"];' % UPDATE, dot)
        # every state but UPDATE closes without deleting when the connection drops
        self.assertEqual(dot.count("nothing deleted"), 2)
        result = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)


RECORD: Dict[str, Any] = {
    "machine": "a test machine", "date": "2026-12-04 12:00 UTC", "commit": "abc1234",
    "command": "python3 -m benchmarks.run --quick",
    "rows": [{"key": "bulk", "label": "a. bulk RETR 20 x 10 KB", "unit": "MB/s", "higher_is_better": True,
              "goal": ""},
             {"key": "idle_kb", "label": "f. memory per idle conn (10)", "unit": "KB",
              "higher_is_better": False, "goal": ""}],
    "results": {"ours": {"bulk": 900.0, "idle_kb": 1.0}, "twisted.mail": {"bulk": 100.0, "idle_kb": 2.0},
                "dovecot": {"bulk": 300.0, "idle_kb": 1100.0}},
}


class BenchmarkChartTests(unittest.TestCase):
    def test_table_ratios(self) -> None:
        rows = bench_results.table_rows(RECORD)
        self.assertEqual(rows[0], ["a. bulk RETR 20 x 10 KB", "MB/s", "900", "100", "300", "3.0x", "9.0x"])
        # lower is better: ours 1 KB against 1,100 KB is 1,100 times better
        self.assertEqual(rows[1][5:], ["1100.0x", "2.0x"])

    def test_ratios_within_rounds_and_spread(self) -> None:
        # three rounds: ours 100, 200, 300 MB/s against Dovecot's 100, 50, 300. Within each round ours
        # was 1x, 4x, 1x better (median 1x); the two medians (200 against 100) would claim 2x
        record = json.loads(json.dumps(RECORD))
        record["results"]["ours"]["bulk"] = 200.0
        record["results"]["dovecot"]["bulk"] = 100.0
        record["spread"] = {"ours": {"bulk": [100.0, 300.0], "idle_kb": [1.0, 1.0]},
                            "dovecot": {"bulk": [50.0, 300.0]}}
        record["ratios"] = {"bulk": {"dovecot": {"median": 1.0, "min": 1.0, "max": 4.0, "rounds": [1.0, 4.0, 1.0]}}}
        record["rounds"] = [{}, {}, {}]
        rows = bench_results.table_rows(record)
        self.assertEqual(rows[0][2:], ["200 (100–300)", "100", "100 (50.0–300)", "1.0x (1.0x–4.0x)",
                                       "2.0x"])  # no per-round twisted.mail ratio: from the medians
        # the same value in every round: no spread shown; idle_kb has no within-round ratios
        self.assertEqual(rows[1][2:], ["1", "2", "1,100", "1100.0x", "2.0x"])
        out = self.mktemp()
        os.makedirs(os.path.join(out, "_static"))
        with open(os.path.join(out, "_static", "r.json"), "w") as f:
            json.dump(record, f)
        with open(os.path.join(out, "index.rst"), "w") as f:
            f.write("Results\n=======\n\n.. bench-results:: _static/r.json\n")
        with open(os.path.join(out, "conf.py"), "w") as f:
            f.write("import sys\nsys.path.insert(0, %r)\nextensions = ['bench_results']\n" % str(DOCS / "_ext"))
        result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", out,
                                 os.path.join(out, "html")], capture_output=True, text=True, timeout=300)
        self.assertEqual(result.returncode, 0, result.stderr)
        page = Path(out, "html", "index.html").read_text()
        self.assertIn("1.0x (1.0x–4.0x)", page)
        self.assertIn("median (min–max) over 3 rounds", page)

    def test_goals_sentence(self) -> None:
        self.assertEqual(bench_results.goals_sentence(RECORD), "This results file does not say which goals were met.")
        record = json.loads(json.dumps(RECORD))
        record["rows"][0].update(met=False, goal=">=2x dovecot")
        record["rows"][1].update(met=True, goal="<=2 KB")
        self.assertEqual(bench_results.goals_sentence(record),
                         "Goals met in this run: 1 of 2. Not met: a. bulk RETR 20 x 10 KB (goal >=2x dovecot).")

    def test_charts_drawn(self) -> None:
        out = self.mktemp()
        written = plot.draw_all(RECORD, out)
        self.assertEqual(sorted(os.path.basename(p) for p in written),
                         ["memory.png", "memory.svg", "throughput.png", "throughput.svg"])
        with open(os.path.join(out, "throughput.png"), "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        with open(os.path.join(out, "throughput.svg")) as f:
            svg = f.read()
        self.assertIn("abc1234", svg)  # the run's provenance is on the chart
        self.assertNotIn("<dc:date>", svg)  # reproducible: no timestamp
        again = plot.draw_all(RECORD, out + "-again")
        with open(again[0]) as f, open(written[0]) as g:
            self.assertEqual(f.read(), g.read())

    def test_old_results_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"machine": "m", "results": RECORD["results"]}, f)
        record = plot.load(path)
        self.assertEqual([row["key"] for row in record["rows"]][:2], ["bulk", "tls_bulk"])
        self.assertTrue(plot.draw_all(record, self.mktemp()))

    def test_not_a_results_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"something": "else"}, f)
        with self.assertRaises(ValueError):
            plot.load(path)

    def test_committed_results_match_the_charts(self) -> None:
        # the performance page's table and charts must come from the same run
        record = plot.load(str(DOCS / "_static" / "bench" / "results.json"))
        for path in (DOCS / "_static" / "bench").glob("*.svg"):
            self.assertIn(record["commit"], path.read_text(), path.name)


class SiteBuildTests(unittest.TestCase):
    def test_builds_with_warnings_as_errors(self) -> None:
        out = self.mktemp()
        result = subprocess.run(
            [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
             "-d", os.path.join(out, "doctrees"), str(DOCS), os.path.join(out, "html")],
            capture_output=True, text=True, timeout=600)
        self.assertEqual(result.returncode, 0, result.stderr)
        html = Path(out, "html")
        # generated at build time: the option reference, the diagram, the benchmark table
        self.assertIn('id="cmdoption-twistd-pop3ng-listen"', (html / "cli.html").read_text())
        cli = (html / "cli.html").read_text()
        self.assertIn('id="cmdoption-pop3ng-fetch-maildir"', cli)
        from twisted_pop3ng.mailbox.plugins import mailbox_store_factories

        for scheme in mailbox_store_factories():  # every installed --mailbox scheme
            self.assertIn('<span class="pre">%s:</span>' % scheme, cli)
        self.assertEqual(len(list((html / "_images").glob("graphviz-*.svg"))), 2)  # layers, session states
        # every interface of the extension-point module has its entry in the API reference
        from twisted_pop3ng import interfaces

        api = (html / "api.html").read_text()
        names = interface_reference.interfaces_of(interfaces)
        self.assertIn("IMailbox", names)
        self.assertIn("IMailboxDelivery", names)
        for name in names:
            self.assertIn('id="twisted_pop3ng.interfaces.%s"' % name, api)
        self.assertIn('id="twisted_pop3ng.interfaces.IMailbox.open_message"', api)
        performance = (html / "performance.html").read_text()
        self.assertIn("vs Dovecot", performance)
        self.assertIn("a. bulk RETR", performance)  # a label, not an enumerated list


class TestCommandTests(unittest.TestCase):
    """The test command is written in three places: README.rst (what the CI runs), .ci/run, and
    docs/quickstart.rst. A package missing from one made the suite fail on a machine set up from
    another."""

    @staticmethod
    def command_in(path: Path) -> str:
        (line,) = [line.strip() for line in path.read_text().splitlines()
                   if line.strip().startswith("apt-get update")]
        return line

    def test_the_same_everywhere(self) -> None:
        readme = self.command_in(ROOT / "README.rst")
        self.assertEqual(self.command_in(DOCS / "quickstart.rst"), readme)
        self.assertEqual(self.command_in(ROOT / ".ci" / "run"), readme)
