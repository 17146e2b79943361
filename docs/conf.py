"""Sphinx configuration: ``python3 -m sphinx -W -b html docs /tmp/docs-out`` (the ``docs`` extra and
Debian's ``graphviz`` for the diagrams)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Autodoc imports the package from this checkout, not from an older installed copy; the local
# extensions (docs/_ext) generate the option reference and the diagrams from that same code.
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..")))
sys.path.insert(0, os.path.join(HERE, "_ext"))

project = "twisted-pop3ng"
author = "the twisted-pop3ng authors"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.graphviz",
    "interface_reference",  # every zope.interface interface of a module (repoze.sphinx.autointerface)
    "cli_reference",   # twistd pop3ng / pop3ng option references, from the Options classes
    "import_graph",    # the layer diagram, from the real imports and setup.cfg's contract
    "session_states",  # the session state diagram, from the server's transition and command tables
    "bench_results",   # the benchmark table, from the JSON the charts were drawn from
]  # no intersphinx: builds need no network
exclude_patterns = ["_build", "examples", "_ext"]
default_role = "literal"
# Every cross-reference must resolve (an :option: or :doc: that does not is an error under -W), except
# Python ones: without intersphinx, type names in signatures point into Twisted and the stdlib.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r".*")]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

graphviz_output_format = "svg"

try:
    import furo  # noqa: F401
except ImportError:
    html_theme = "alabaster"
else:
    html_theme = "furo"
html_title = "twisted-pop3ng"
html_static_path = ["_static"]
