"""TLS for the client: whom to trust and how to check the server's name.

Rules of this module: public Twisted/pyOpenSSL APIs only; TLS 1.2 is the minimum; the host name
is always verified (service_identity, RFC 6125/7817).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import ssl

from twisted_pop3ng.tls.pem import pem_blocks

__all__ = ["trust_root", "tls_options"]


def trust_root(cafile: Optional[str]) -> Any:
    """The CA certificates from a PEM file (all of them), or the platform's trust store."""
    if cafile is None:
        return ssl.platformTrust()
    with open(cafile, "rb") as f:
        pems = pem_blocks(f.read())
    if not pems:
        raise ValueError("no PEM certificate in %s" % cafile)
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(p) for p in pems])


def tls_options(hostname: str, cafile: Optional[str] = None, trust: Any = None) -> Any:
    """Client TLS options verifying ``hostname`` (service_identity, RFC 6125/7817), TLS 1.2+."""
    return ssl.optionsForClientTLS(hostname, trustRoot=trust if trust is not None else trust_root(cafile),
                                   extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})
