"""Sphinx configuration: ``python3 -m sphinx -W -b html docs /tmp/docs-out`` (the ``docs`` extra)."""

import os
import sys

# Autodoc imports the package from this checkout, not from an older installed copy.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

project = "twisted-pop3ng"
author = "the twisted-pop3ng authors"
extensions = ["sphinx.ext.autodoc"]  # no intersphinx: builds need no network
exclude_patterns = ["_build", "examples"]
default_role = "literal"
nitpicky = False

try:
    import furo  # noqa: F401
except ImportError:
    html_theme = "alabaster"
else:
    html_theme = "furo"
html_title = "twisted-pop3ng"
