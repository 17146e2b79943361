"""``twistd pop3ng``'s entry point, named by the plugin's ``ServiceMaker`` (and by existing
``dropin.cache`` files), so it stays here for good: the options are in
:mod:`twisted_pop3ng.service.options`, the service in :mod:`twisted_pop3ng.service.build`."""

from twisted_pop3ng.service.build import configure_reactor, make_factory, makeService
from twisted_pop3ng.service.options import Options

__all__ = ["Options", "makeService", "make_factory", "configure_reactor"]
