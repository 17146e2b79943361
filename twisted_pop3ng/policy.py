"""Deprecated: this module moved to :mod:`twisted_pop3ng.server.policy`; import from there."""

import warnings

from twisted_pop3ng.server.policy import (  # noqa: F401
    MAX_FAILURE_DELAY,
    FAILURE_MEMORY,
    MAX_TRACKED_ADDRESSES,
    Network,
    SecurityConfig,
    parse_network,
    AbuseGuard,
    security,
    guard,
    peer_ip,
    is_secure,
    is_local,
    plaintext_allowed,
    check_plaintext,
    user_capability,
    connection_made,
    connection_lost,
    greeting,
    failure_delay,
    admit,
    capabilities,
)

__all__ = [
    'MAX_FAILURE_DELAY', 'FAILURE_MEMORY', 'MAX_TRACKED_ADDRESSES', 'Network', 'SecurityConfig',
    'parse_network', 'AbuseGuard', 'security', 'guard', 'peer_ip', 'is_secure', 'is_local',
    'plaintext_allowed', 'check_plaintext', 'user_capability', 'connection_made',
    'connection_lost', 'greeting', 'failure_delay', 'admit', 'capabilities',
]

warnings.warn("twisted_pop3ng.policy is deprecated: import twisted_pop3ng.server.policy",
              DeprecationWarning, stacklevel=2)
