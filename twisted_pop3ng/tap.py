"""``twistd pop3ng``'s entry point, named by the plugin's ``ServiceMaker`` (and by existing
``dropin.cache`` files), so it stays here for good: the options are in
:mod:`twisted_pop3ng.service.options`, the service in :mod:`twisted_pop3ng.service.build`."""

import sys
from typing import Any

from twisted.python import usage

from twisted_pop3ng.service import options as _options
from twisted_pop3ng.service.build import configure_reactor, make_factory, makeService

__all__ = ["Options", "makeService", "make_factory", "configure_reactor"]


class Options(_options.Options):
    """The options as ``twistd pop3ng`` parses them: a usage error ends the process with status 1
    and the message, as Twisted >= 26.10 does itself (older twistd printed it and exited 0, so a
    service manager took a mistyped option for a clean stop)."""

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            print(self)
            print("twistd pop3ng: %s" % (error,))
            sys.stdout.flush()
            raise SystemExit(1)
