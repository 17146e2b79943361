"""Option references generated from the code at build time, so the docs cannot drift from it.

``.. twistd-options:: twisted_pop3ng.service.options.Options``
    Every option of a ``twisted.python.usage.Options`` class: its ``optFlags``, ``optParameters``
    (with their defaults) and ``opt_*`` methods (the docstring is the help). ``:program:`` names the
    command (``twistd pop3ng``). ``:sections:`` groups the options by the module whose
    ``OPT_FLAGS``/``OPT_PARAMETERS`` list declares them: ``module = Title; module = Title``; the rest
    are listed first, under ``:first-section:``.

``.. cli-subcommands::``
    The table of ``pop3ng`` subcommands (``twisted_pop3ng.cli.SUBCOMMANDS``), then each one's
    options, read from the ``argparse`` parser its entry point builds (found by running it with
    ``--help`` while ``parse_known_args`` is intercepted). A subcommand that does not use argparse
    gets its ``--help`` text verbatim.

``.. mailbox-schemes::``
    The ``--mailbox`` schemes installed, with their help (what ``--help-mailbox`` prints).

Each option becomes a Sphinx ``option`` directive, so pages can link to it with
``:option:`twistd pop3ng --listen```.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import re
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)


def rst_text(text: str) -> str:
    """Plain help text made safe for reStructuredText: one line, markup characters escaped."""
    return re.sub(r"([\\`*_|])", r"\\\1", " ".join(str(text).split()))


def _import(dotted: str) -> Any:
    """``package.module.Name`` or ``package.module:Name``."""
    if ":" in dotted:
        module, _, name = dotted.partition(":")
    else:
        module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _option_block(names: str, help_lines: Sequence[str]) -> List[str]:
    lines = [".. option:: " + names, ""]
    lines += ["   " + line if line else "" for line in help_lines]
    return lines + [""]


def _format_default(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return "``%s``" % (value,)


# -- twisted.python.usage.Options ------------------------------------------------------------------


class UsageOption:
    """One option of a usage.Options class, as the docs show it."""

    def __init__(self, name: str, short: Optional[str], help: str, takes_value: bool,
                 default: Any = None, metavar: str = "", repeatable: bool = False) -> None:
        self.name, self.short, self.help = name, short, help
        self.takes_value, self.default, self.metavar, self.repeatable = takes_value, default, metavar, repeatable

    def rst(self) -> List[str]:
        names = "--" + self.name + (" <%s>" % self.metavar if self.takes_value else "")
        if self.short:
            names = "-" + self.short + (" <%s>" % self.metavar if self.takes_value else "") + ", " + names
        text = rst_text(self.help)
        notes = []
        if self.default is not None and self.takes_value:
            notes.append("Default: %s." % _format_default(self.default))
        if self.repeatable and "repeatable" not in text.lower():
            notes.append("Repeatable.")
        return _option_block(names, [text] + ([""] + [" ".join(notes)] if notes else []))


def usage_options(cls: type) -> List[Tuple[UsageOption, Any]]:
    """Every option of ``cls`` with the object that declared it (an optFlags/optParameters entry,
    or the ``opt_*`` function), in the order ``--help`` would list them."""
    instance = cls()  # usage.Options gathers flags, parameters and handlers when made
    found: List[Tuple[UsageOption, Any]] = []
    seen = set()
    short_of = {long: short for short, long in instance.synonyms.items() if len(short) == 1}
    for entry in _entries(cls, "optFlags"):
        name = entry[0]
        seen.add(name)
        found.append((UsageOption(name, entry[1], entry[2] if len(entry) > 2 else "", False), entry))
    for entry in _entries(cls, "optParameters"):
        name = entry[0]
        seen.add(name)
        default = entry[2] if len(entry) > 2 else None
        metavar = name.upper().rsplit("-", 1)[-1]  # --tls-cert <CERT>, --oauth-jwks-url <URL>
        found.append((UsageOption(name, entry[1], entry[3] if len(entry) > 3 else "", True, default,
                                  _metavar(entry, metavar)), entry))
    for attr in sorted(dir(cls)):
        if not attr.startswith("opt_"):
            continue
        name = attr[4:].replace("_", "-")
        method = getattr(cls, attr)
        canonical = instance.synonyms.get(name, name)
        if name in seen or canonical != name:
            continue  # a flag/parameter's generated handler, or an alias listed with its option
        seen.add(name)
        params = [p for p in inspect.signature(method).parameters.values() if p.name != "self"]
        takes_value = bool(params)
        doc = inspect.getdoc(method) or instance.docs.get(name, "")
        metavar = params[0].name.upper() if params else ""
        if "endpoint" in doc.lower():
            metavar = "ENDPOINT"  # the handlers' argument is called "description"
        repeatable = takes_value and isinstance(instance.opts.get(name), list)
        found.append((UsageOption(name, short_of.get(name), doc.split("\n\n")[0], takes_value,
                                  metavar=metavar, repeatable=repeatable), method))
    return found


def _entries(cls: type, attribute: str) -> Iterator[Sequence[Any]]:
    """``optFlags``/``optParameters`` of ``cls`` and its bases, as usage.Options merges them."""
    names = set()
    for klass in inspect.getmro(cls):
        for entry in klass.__dict__.get(attribute, ()):
            if entry[0] not in names:
                names.add(entry[0])
                yield entry


def _metavar(entry: Sequence[Any], fallback: str) -> str:
    """What the value is called: N for counts, SECONDS for durations, else the option's last word."""
    coerce = entry[4] if len(entry) > 4 else None
    name = getattr(coerce, "__name__", "")
    help_text = str(entry[3]) if len(entry) > 3 else ""
    if coerce is int or "count" in name:
        return "N"
    if coerce is float or "second" in name:
        if re.search(r"\bmicroseconds?\b", help_text):
            return "MICROSECONDS"
        return "SECONDS" if re.search(r"\bseconds?\b", help_text, re.I) else "NUMBER"
    return fallback


class TwistdOptionsDirective(SphinxDirective):
    required_arguments = 1
    option_spec = {
        "program": directives.unchanged_required,
        "sections": directives.unchanged,
        "first-section": directives.unchanged,
    }

    def run(self) -> List[nodes.Node]:
        sections = _parse_sections(self.options.get("sections", ""))
        try:
            cls = _import(self.arguments[0])
            options = usage_options(cls)
            for module_name in sections:
                importlib.import_module(module_name)
        except Exception as error:  # a broken import must fail the -W build, not hide the reference
            logger.warning("twistd-options: cannot read %s: %r", self.arguments[0], error,
                           location=self.get_location())
            return []
        grouped: Dict[str, List[UsageOption]] = {title: [] for title in sections.values()}
        first = self.options.get("first-section")
        rest: List[UsageOption] = []
        for option, source in options:
            title = _declaring_section(source, sections)
            (grouped[title] if title else rest).append(option)
        lines = [".. program:: " + self.options.get("program", cls.__name__), ""]
        for title, members in [(first, rest)] + list(grouped.items()):
            if not members:
                continue
            members.sort(key=lambda option: option.name)
            if title:
                lines += [title, "~" * len(title), ""]
            for option in members:
                lines += option.rst()
        return _parse(self, lines)


def _parse_sections(text: str) -> Dict[str, str]:
    """``module = Title; module = Title`` -> {module: title}, in order."""
    sections = {}
    for part in text.split(";"):
        if "=" in part:
            module, _, title = part.partition("=")
            sections[module.strip()] = title.strip()
    return sections


def _declaring_section(source: Any, sections: Dict[str, str]) -> Optional[str]:
    """The section of the module whose OPT_FLAGS/OPT_PARAMETERS holds ``source`` (identity, not
    equality: two modules may declare look-alike entries)."""
    for module_name, title in sections.items():
        module = importlib.import_module(module_name)
        for attribute in ("OPT_FLAGS", "OPT_PARAMETERS"):
            if any(entry is source for entry in getattr(module, attribute, ())):
                return title
        if inspect.isfunction(source) and getattr(source, "__module__", None) == module_name:
            return title
    return None


def _parse(directive: SphinxDirective, lines: List[str]) -> List[nodes.Node]:
    container = nodes.section() if any(line.startswith("~~") for line in lines) else nodes.container()
    container.document = directive.state.document
    nested_parse_with_titles(directive.state, StringList(lines, source=directive.get_source_info()[0]),
                             container)
    return list(container.children)


# -- argparse subcommands --------------------------------------------------------------------------


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def subcommand_parser(name: str) -> Tuple[Optional[argparse.ArgumentParser], str]:
    """The argparse parser ``pop3ng NAME`` builds, or None and its ``--help`` output."""
    from twisted_pop3ng.cli import SUBCOMMANDS

    module_name, _, function = SUBCOMMANDS[name][0].partition(":")
    entry = getattr(importlib.import_module(module_name), function)
    original = argparse.ArgumentParser.parse_known_args

    def capture(parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Captured(parser)

    output = io.StringIO()
    stdin = sys.stdin
    argparse.ArgumentParser.parse_known_args = capture  # type: ignore[method-assign,assignment]
    try:
        # An entry point that does not use argparse runs for real with --help: it must not wait
        # for input (pop3ng deliver reads a message from stdin), so stdin is empty.
        sys.stdin = io.TextIOWrapper(io.BytesIO())
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            entry(["--help"])
    except _Captured as captured:
        return captured.parser, ""
    except SystemExit:
        pass
    finally:
        sys.stdin = stdin
        argparse.ArgumentParser.parse_known_args = original  # type: ignore[method-assign]
    return None, output.getvalue()


def argparse_rst(parser: argparse.ArgumentParser, program: str) -> List[str]:
    lines = [".. program:: " + program, ""]
    if parser.description:
        lines += [rst_text(parser.description), ""]
    usage = parser.format_usage().strip()
    usage = usage[len("usage: "):] if usage.startswith("usage: ") else usage
    lines += ["Usage::", ""] + ["    " + line for line in usage.splitlines()] + [""]
    for group in parser._mutually_exclusive_groups:
        if group.required:
            choices = ", ".join("``%s``" % a.option_strings[-1] for a in group._group_actions)
            lines += ["Exactly one of %s is required." % choices, ""]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        takes_value = action.nargs != 0
        metavar = action.metavar if isinstance(action.metavar, str) else (
            action.dest.upper() if action.option_strings else action.dest)
        if action.option_strings:
            names = ", ".join(s + (" <%s>" % metavar if takes_value else "") for s in action.option_strings)
        else:
            names = metavar
        help_text = action.help or ""
        try:
            help_text = help_text % dict(vars(action), prog=parser.prog)
        except (KeyError, TypeError, ValueError):
            pass
        if isinstance(action, argparse._SubParsersAction):
            continue  # below, one block per command
        body = [rst_text(help_text)]
        default = action.default
        if takes_value and action.option_strings and default not in (None, argparse.SUPPRESS, [], ""):
            body += ["", "Default: %s." % _format_default(default)]
        lines += _option_block(names, body)
    if parser.epilog:
        lines += [rst_text(parser.epilog), ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                lines += ["**%s %s**: %s" % (program, name, rst_text(helps.get(name, ""))), ""]
                lines += argparse_rst(subparser, "%s %s" % (program, name))
    return lines


class CliSubcommandsDirective(SphinxDirective):
    """The table of subcommands, then a section per subcommand with its options. The content adds
    a sentence to a subcommand's section: ``NAME: text`` (reStructuredText, one line)."""

    has_content = True

    def run(self) -> List[nodes.Node]:
        from twisted_pop3ng.cli import SUBCOMMANDS

        notes = {}
        for line in self.content:
            name, _, text = str(line).partition(":")
            notes[name.strip()] = text.strip()
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 25 75", "",
                 "   * - subcommand", "     - what it does"]
        for name, (_, text) in sorted(SUBCOMMANDS.items()):
            lines += ["   * - :ref:`pop3ng %s <pop3ng-%s>`" % (name, name), "     - " + rst_text(text)]
        lines.append("")
        for name, (_, text) in sorted(SUBCOMMANDS.items()):
            title = "``pop3ng %s``" % name
            lines += [".. _pop3ng-%s:" % name, "", title, "~" * len(title), ""]
            lines += [rst_text(text[:1].upper() + text[1:]) + ". " + notes.get(name, ""), ""]
            try:
                parser, help_text = subcommand_parser(name)
            except Exception as error:  # a subcommand that cannot even print its help is a bug
                logger.warning("cli-subcommands: pop3ng %s --help: %r", name, error, location=self.get_location())
                continue
            if parser is not None:
                lines += argparse_rst(parser, "pop3ng " + name)
            else:
                lines += ["::", ""] + ["    " + line for line in help_text.splitlines()] + [""]
        return _parse(self, lines)


class MailboxSchemesDirective(SphinxDirective):
    """The ``--mailbox`` schemes installed (the ``IMailboxStoreFactory`` plugins), as
    ``--help-mailbox`` lists them."""

    def run(self) -> List[nodes.Node]:
        try:
            from twisted_pop3ng.mailbox.plugins import mailbox_store_factories

            factories = mailbox_store_factories()
        except Exception as error:
            logger.warning("mailbox-schemes: %r", error, location=self.get_location())
            return []
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 20 80", "",
                 "   * - scheme", "     - what it serves"]
        for scheme in sorted(factories):
            lines += ["   * - ``%s:``" % scheme, "     - " + rst_text(getattr(factories[scheme], "help", ""))]
        return _parse(self, lines + [""])


def setup(app: Sphinx) -> Dict[str, Any]:
    app.add_directive("twistd-options", TwistdOptionsDirective)
    app.add_directive("cli-subcommands", CliSubcommandsDirective)
    app.add_directive("mailbox-schemes", MailboxSchemesDirective)
    return {"parallel_read_safe": True, "version": "1"}
