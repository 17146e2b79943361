"""The ``--reactor=pop3ng-epoll`` entry point, named by the plugin's ``Reactor`` (and by existing
``dropin.cache`` files), so it stays here for good: the reactor is
:mod:`twisted_pop3ng.fastpath.reactor`."""

from twisted_pop3ng.fastpath.reactor import LeanEPollReactor, install, install_default

__all__ = ["LeanEPollReactor", "install", "install_default"]
