"""Deprecated: this module moved to :mod:`twisted_pop3ng.service.security_options`; import from there."""

import warnings

from twisted_pop3ng.service.security_options import (  # noqa: F401
    OPT_FLAGS,
    OPT_PARAMETERS,
    opt_trusted_network,
    post_options,
    security_config,
    configure,
    install_sighup,
    ClientCertTLS,
)

__all__ = [
    'OPT_FLAGS', 'OPT_PARAMETERS', 'opt_trusted_network', 'post_options', 'security_config',
    'configure', 'install_sighup', 'ClientCertTLS',
]

warnings.warn("twisted_pop3ng.tap_security is deprecated: import twisted_pop3ng.service.security_options",
              DeprecationWarning, stacklevel=2)
