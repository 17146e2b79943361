"""``.. autointerfaces:: MODULE``: every ``zope.interface`` interface defined in MODULE, in source
order, documented with repoze's ``autointerface`` (methods and attributes). Found by walking the
module at build time, so a new interface cannot be left out; ``automodule`` skips interfaces,
which are not classes.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Dict, List

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from zope.interface.interface import InterfaceClass

logger = logging.getLogger(__name__)


def interfaces_of(module: Any) -> List[str]:
    """Names of the interfaces defined (not imported) in ``module``, in source order."""
    found = [(name, value) for name, value in vars(module).items()
             if isinstance(value, InterfaceClass) and value.__module__ == module.__name__ and not name.startswith("_")]

    def line(item: Any) -> int:
        try:
            return inspect.getsourcelines(item[1])[1]  # zope interfaces have no __code__: by text
        except (OSError, TypeError):
            source = inspect.getsource(module)
            return source.find("class %s(" % item[0])

    return [name for name, _ in sorted(found, key=line)]


class AutoInterfaces(SphinxDirective):
    required_arguments = 1

    def run(self) -> List[nodes.Node]:
        try:
            module = importlib.import_module(self.arguments[0])
        except ImportError as error:
            logger.warning("autointerfaces: %s", error, location=self.get_location())
            return []
        lines: List[str] = []
        for name in interfaces_of(module):
            lines += [".. autointerface:: %s.%s" % (module.__name__, name), "   :members:", ""]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.get_source_info()[0]), self.content_offset, container)
        return list(container.children)


def setup(app: Sphinx) -> Dict[str, Any]:
    app.setup_extension("repoze.sphinx.autointerface")
    app.add_directive("autointerfaces", AutoInterfaces)
    return {"parallel_read_safe": True, "version": "1"}
