"""Deprecated: this module moved to :mod:`twisted_pop3ng.service.demo`; import from there."""

import warnings

from twisted_pop3ng.service.demo import (  # noqa: F401
    DEMO_USER,
    SAMPLES,
    DemoInfo,
    prepare,
    announce,
)

__all__ = [
    'DEMO_USER', 'SAMPLES', 'DemoInfo', 'prepare', 'announce',
]

warnings.warn("twisted_pop3ng.demo is deprecated: import twisted_pop3ng.service.demo",
              DeprecationWarning, stacklevel=2)
