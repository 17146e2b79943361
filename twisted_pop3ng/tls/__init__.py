"""TLS for both sides: server certificates (loading, reloading, self-signed for the demo) and the
client's trust and identity checks.

Rules of this package: public pyOpenSSL/Twisted APIs only; the faster POP3S record path lives in
:mod:`twisted_pop3ng.fastpath.tls` (its old names here are deprecated aliases).
"""

import importlib
import warnings
from typing import Any

from twisted_pop3ng.tls.server import (TLSConfigError, ReloadableServerTLS, load_options,
                                       make_self_signed)

__all__ = ["TLSConfigError", "ReloadableServerTLS", "load_options", "make_self_signed"]

_MOVED_TO_FASTPATH = ("BatchedTLSProtocol", "BatchedTLSFactory", "tls_factory", "RECORD_SIZE")


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_FASTPATH:
        warnings.warn("twisted_pop3ng.tls.%s is deprecated: it is twisted_pop3ng.fastpath.tls.%s"
                      % (name, name), DeprecationWarning, stacklevel=2)
        # By name: the tls package itself must not depend on the fast path.
        return getattr(importlib.import_module("twisted_pop3ng.fastpath.tls"), name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
