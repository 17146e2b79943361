"""``.. import-graph::``: the package's layers and the imports between them, drawn by graphviz from
the code at build time, so the picture cannot drift from it.

The layers are those of ``setup.cfg``'s ``[importlinter:contract:layers]`` (the contract
``lint-imports`` enforces), top layer first; the directive's content names them, one title a line.
Every ``import``/``from ... import`` statement of every module under the package (tests excepted,
function-level and ``TYPE_CHECKING`` imports included, as import-linter counts them) becomes an arrow
from the importing layer member to the imported one. An arrow that points upwards breaks the contract
and is drawn red (``lint-imports`` fails on it too).

Options: ``:package:`` (default ``twisted_pop3ng``), ``:config:`` (default ``../setup.cfg``,
relative to the docs directory), and those of ``graphviz`` (``:caption:``, ``:alt:``, ``:align:``).
"""

from __future__ import annotations

import ast
import configparser
import os
from typing import Any, Dict, List, Optional, Set, Tuple

from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.ext.graphviz import Graphviz
from sphinx.util import logging

logger = logging.getLogger(__name__)


def read_layers(config_path: str, package: str) -> List[List[str]]:
    """The members of each layer, top first, from the import-linter ``layers`` contract."""
    parser = configparser.ConfigParser()
    if not parser.read(config_path):
        raise ValueError("cannot read %s" % config_path)
    for section in parser.sections():
        if section.startswith("importlinter:contract:") and parser.get(section, "type", fallback="") == "layers":
            containers = parser.get(section, "containers", fallback="").split()
            if containers and package not in containers:
                continue
            lines = [line.strip() for line in parser.get(section, "layers").splitlines() if line.strip()]
            return [[member.strip().strip("()") for member in line.split("|")] for line in lines]
    raise ValueError("%s has no layers contract for %s" % (config_path, package))


def module_files(root: str, package: str) -> Dict[str, str]:
    """``dotted.module.name -> path`` of every Python file of the package, tests excepted."""
    found = {}
    base = os.path.join(root, *package.split("."))
    for directory, subdirs, files in os.walk(base):
        subdirs[:] = sorted(d for d in subdirs if d not in ("test", "tests", "__pycache__"))
        for name in sorted(files):
            if name.endswith(".py"):
                relative = os.path.relpath(os.path.join(directory, name), root)[:-3].replace(os.sep, ".")
                found[relative[: -len(".__init__")] if relative.endswith(".__init__") else relative] = \
                    os.path.join(directory, name)
    return found


def imported_modules(module: str, path: str, is_package: bool) -> Set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            # "from package import submodule" imports the submodule too
            names.update(base + "." + alias.name for alias in node.names if alias.name != "*")
    return names


def layer_edges(root: str, package: str, members: Set[str]) -> Tuple[Set[Tuple[str, str]], Set[str]]:
    """Arrows between layer members (``importer -> imported``), and the source files read."""
    files = module_files(root, package)
    edges = set()
    for module, path in files.items():
        source = _member_of(module, package, members)
        if source is None:
            continue
        for name in imported_modules(module, path, path.endswith("__init__.py")):
            target = _member_of(name, package, members)
            if target is not None and target != source:
                edges.add((source, target))
    return edges, set(files.values())


def _member_of(module: str, package: str, members: Set[str]) -> Optional[str]:
    if not module.startswith(package + "."):
        return None
    first = module[len(package) + 1:].split(".", 1)[0]
    return first if first in members else None


def dot_source(layers: List[List[str]], titles: List[str], edges: Set[Tuple[str, str]]) -> str:
    rank = {member: n for n, layer in enumerate(layers) for member in layer}
    lines = [
        "digraph layers {",
        '  graph [rankdir=TB, ranksep=0.55, nodesep=0.25, fontname="sans-serif", fontsize=11, '
        'newrank=true, concentrate=true, bgcolor="transparent"];',
        '  node [shape=box, style="rounded,filled", fillcolor="#f1f3f5", color="#868e96", '
        'fontname="monospace", fontsize=11];',
        '  edge [color="#adb5bd", arrowsize=0.6];',
    ]
    for n, (layer, title) in enumerate(zip(layers, titles)):
        lines.append('  subgraph cluster_%d { label="%s"; labeljust=l; style="rounded,dashed"; '
                     'color="#ced4da"; fontcolor="#495057";' % (n, title))
        lines.append("    " + " ".join('"%s";' % member for member in layer))
        lines.append("    {rank=same; %s}" % " ".join('"%s";' % m for m in layer))
        lines.append("  }")
    for source, target in sorted(edges):
        upward = rank[target] < rank[source]
        same = rank[target] == rank[source]
        style = ' [color="#e03131", penwidth=2, constraint=false]' if upward else (
            ' [color="#e8590c", constraint=false]' if same else "")
        lines.append('  "%s" -> "%s"%s;' % (source, target, style))
    lines.append("}")
    return "\n".join(lines) + "\n"


class ImportGraph(Graphviz):
    has_content = True
    required_arguments = 0
    optional_arguments = 0
    option_spec = dict(Graphviz.option_spec, package=directives.unchanged, config=directives.unchanged)

    def run(self) -> List[Any]:
        package = self.options.pop("package", "twisted_pop3ng")
        docs_dir = self.env.srcdir
        config = os.path.normpath(os.path.join(docs_dir, self.options.pop("config", "../setup.cfg")))
        root = os.path.dirname(config)
        titles = [str(line).strip() for line in self.content if str(line).strip()]  # type: ignore[has-type]
        try:
            layers = read_layers(config, package)
            members = {member for layer in layers for member in layer}
            edges, sources = layer_edges(root, package, members)
        except (OSError, ValueError, SyntaxError) as error:
            logger.warning("import-graph: %s", error, location=self.get_location())
            return []
        if len(titles) != len(layers):
            logger.warning("import-graph: %d layer titles for the %d layers of %s", len(titles), len(layers),
                           config, location=self.get_location())
            titles = (titles + [""] * len(layers))[: len(layers)]
        for path in sources | {config}:
            self.env.note_dependency(path)
        self.content = StringList(dot_source(layers, titles, edges).splitlines())
        self.arguments: List[str] = []
        return super().run()


def setup(app: Sphinx) -> Dict[str, Any]:
    app.setup_extension("sphinx.ext.graphviz")
    app.add_directive("import-graph", ImportGraph)
    return {"parallel_read_safe": True, "version": "1"}
