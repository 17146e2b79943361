"""The security half of ``twistd pop3ng``: its options, their checks, and what they set up.

:mod:`twisted_pop3ng.service.build` merges :data:`OPT_FLAGS`/:data:`OPT_PARAMETERS` into its ``Options``, calls
:func:`post_options` from ``postOptions``; the factory is made with :func:`security_config` as its
``ServerConfig.security`` and :func:`factory_arguments` as keyword arguments, and
:func:`watch_tls` installs the certificate reload.
"""

from __future__ import annotations

import hashlib
import hmac
import signal
from typing import Any, Dict, List, Optional

from twisted.logger import Logger
from twisted.python import usage

from twisted_pop3ng._redact import redact
from twisted_pop3ng.server import policy
from twisted_pop3ng.service import abuse_options  # its options join Options (options.py)

log = Logger()

OPT_FLAGS = [
    ["allow-plaintext-auth", None, "Allow USER/PASS and AUTH PLAIN/LOGIN without TLS from any address "
                                   "(by default only from local and --trusted-network addresses)."],
    ["apop", None, "Offer APOP (RFC 1939 §7); needs {PLAIN} passwords."],
]
OPT_PARAMETERS = [
    ["sasl-mechanisms", None, None, "Comma-separated SASL mechanisms to offer (default: all the "
                                    "configuration supports)."],
    ["max-auth-failure-delay", None, policy.MAX_FAILURE_DELAY,
     "Ceiling of the failure delay, which doubles per failure from an address.", float],
    ["max-connections-per-address", None, 50,
     "Simultaneous connections from one remote address (0: no limit; local ones are not counted).", int],
    ["max-connections-per-user", None, 10, "Simultaneous sessions of one user (0: no limit).", int],
    ["login-delay", None, None, "RFC 2449 LOGIN-DELAY: minimum seconds between logins of a user; "
                                "advertised and enforced.", int],
    ["expire", None, None, "RFC 2449 EXPIRE to advertise: days, or NEVER (the server does not expire "
                           "mail itself)."],
    ["hostname", None, None, "Host name in APOP and CRAM-MD5 challenges (default: the system's)."],
    ["sasl-secret-file", None, None, "File with a secret (>= 16 bytes) keying the SCRAM salts made "
                                     "up for unknown users (default: a key derived from the "
                                     "passwd-file, which changes when the file does)."],
    ["tls-client-ca", None, None, "PEM CA certificates: request client certificates and offer SASL "
                                  "EXTERNAL to clients whose certificate they sign."],
    ["tls-ticket-rotation", None, 4 * 3600.0, "Seconds between TLS session-ticket key rotations (the "
                                              "keys are shared by all --workers processes).", float],
    ["tls-ticket-grace", None, 4 * 3600.0, "Seconds a retired ticket key still resumes sessions (0: "
                                           "tickets stop resuming at each rotation).", float],
    ["oauth-hmac-key", None, None, "File with a secret key (>= 16 bytes): offer OAUTHBEARER and XOAUTH2 "
                                   "for tokens signed with it (see docs/security.rst)."],
    ["oauth-jwks-url", None, None, "Offer OAUTHBEARER and XOAUTH2 for JWT access tokens signed with the "
                                   "keys at this JWKS URL (https://, or http:// on loopback); needs "
                                   "--oauth-issuer and --oauth-audience."],
    ["oauth-jwks-file", None, None, "Like --oauth-jwks-url, with the keys in a local JWKS file."],
    ["oauth-issuer", None, None, "The identity provider's issuer (the tokens' iss claim)."],
    ["oauth-audience", None, None, "The audience tokens must be issued for (their aud claim): this "
                                   "server's client id at the provider."],
    ["oauth-username-claim", None, "email", "The token claim (or introspection field) naming the user."],
    ["oauth-algorithms", None, ",".join(("RS256", "ES256", "PS256")),
     "JWT signature algorithms allowed (comma-separated; never none or HS*)."],
    ["oauth-introspection-url", None, None, "Offer OAUTHBEARER and XOAUTH2 for tokens the provider "
                                            "confirms at this RFC 7662 introspection endpoint "
                                            "(https://, or http:// on loopback)."],
    ["oauth-client-id", None, None, "Client id for --oauth-introspection-url."],
    ["oauth-client-secret-file", None, None, "File with the client secret for --oauth-introspection-url."],
]


def opt_trusted_network(options: Any, cidr: str) -> None:
    try:
        options["trusted-networks"].append(policy.parse_network(cidr))
    except ValueError as error:
        raise usage.UsageError("--trusted-network %s: %s" % (cidr, error))


def post_options(options: Any) -> None:
    """Validate the security options and build what they name (clear errors, not tracebacks)."""
    options.setdefault("trusted-networks", [])
    mechs = options["sasl-mechanisms"]
    if mechs:
        from twisted_pop3ng.auth.sasl_server import BY_NAME

        names = [m.strip().upper() for m in mechs.split(",") if m.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise usage.UsageError("--sasl-mechanisms: unknown %s; known: %s"
                                   % (", ".join(unknown), ", ".join(BY_NAME)))
        options["sasl-mechanism-list"] = names
    expire = options["expire"]
    if expire is not None and expire.upper() != "NEVER" and not expire.isdigit():
        raise usage.UsageError("--expire takes a number of days or NEVER")
    if options["login-delay"] is not None and options["login-delay"] < 0:
        raise usage.UsageError("--login-delay must not be negative")
    _token_validator(options)
    _sasl_secret(options)
    _ticket_keys(options)
    if options["tls-client-ca"]:
        if options.get("tls") is None:
            raise usage.UsageError("--tls-client-ca needs --tls-cert")
        try:
            options["tls"] = ClientCertTLS(options["tls"], options["tls-client-ca"])
        except (OSError, ValueError) as error:
            raise usage.UsageError("--tls-client-ca %s: %s" % (options["tls-client-ca"], error))


#: The longest a session ticket may stay valid (rotation + grace), in seconds: a year.
MAX_TICKET_LIFETIME = 365 * 86400


def _ticket_keys(options: Any) -> None:
    """Session tickets sealed with keys rotated every ``--tls-ticket-rotation`` seconds (a worker
    then takes its master's keys: :func:`share_ticket_keys`)."""
    rotation, grace = options["tls-ticket-rotation"], options["tls-ticket-grace"]
    if rotation <= 0 or grace < 0:
        raise usage.UsageError("--tls-ticket-rotation must be positive and --tls-ticket-grace not negative")
    if rotation + grace > MAX_TICKET_LIFETIME:  # (1e20 overflowed OpenSSL's session timeout)
        raise usage.UsageError("--tls-ticket-rotation plus --tls-ticket-grace must be at most %d "
                               "seconds (a year)" % MAX_TICKET_LIFETIME)
    if options.get("tls") is not None:
        from twisted_pop3ng.fastpath import tls_tickets
        from twisted_pop3ng.tls.tickets import TicketKeys

        options["tls"].use_ticket_keys(TicketKeys(rotation=rotation, grace=grace), tls_tickets.install,
                                       tls_tickets.TicketWithFirstWrite)


def _server_tls(tls: Any) -> Any:
    """The :class:`~twisted_pop3ng.tls.ReloadableServerTLS` behind ``tls`` (or :class:`ClientCertTLS`)."""
    return getattr(tls, "inner", tls)


def ticket_keys_export(tls: Any) -> Optional[Dict[str, Any]]:
    """The ticket keys a ``--workers`` master hands to its workers (None without TLS)."""
    keys = getattr(_server_tls(tls), "ticket_keys", None)
    return keys.export() if keys is not None else None


def share_ticket_keys(tls: Any, exported: Optional[Dict[str, Any]]) -> None:
    """In a worker: seal and open tickets with the master's keys, so a ticket resumes anywhere."""
    if tls is not None and exported:
        from twisted_pop3ng.tls.tickets import TicketKeys

        _server_tls(tls).use_ticket_keys(TicketKeys.from_export(exported))


def _sasl_secret(options: Any) -> None:
    """``options["sasl-secret-key"]`` from ``--sasl-secret-file``: an HMAC of the file's bytes
    (so that the key used is not the file's text), or a usage error."""
    path = options.get("sasl-secret-file")
    if not path:
        return
    try:
        with open(path, "rb") as f:
            secret = f.read(65536).strip()
    except OSError as error:
        raise usage.UsageError("--sasl-secret-file %s: %s" % (path, error.strerror or error))
    if len(secret) < 16:
        raise usage.UsageError("--sasl-secret-file %s: the secret must be at least 16 bytes" % path)
    options["sasl-secret-key"] = hmac.new(secret, b"twisted-pop3ng SCRAM salt key 1",
                                          hashlib.sha256).digest()


def _token_validator(options: Any) -> None:
    """``options["token-validator"]`` from the one OAuth source given (HMAC key, JWKS, or
    introspection), or a usage error."""
    sources = [name for name in ("oauth-hmac-key", "oauth-jwks-url", "oauth-jwks-file",
                                 "oauth-introspection-url") if options.get(name)]
    if len(sources) > 1:
        raise usage.UsageError("give only one of --%s" % ", --".join(sources))
    if not sources:
        for name in ("oauth-issuer", "oauth-audience", "oauth-client-id", "oauth-client-secret-file"):
            if options.get(name):
                raise usage.UsageError("--%s needs --oauth-jwks-url, --oauth-jwks-file or "
                                       "--oauth-introspection-url" % name)
        return
    source = sources[0]
    claim = options.get("oauth-username-claim") or "email"
    try:
        if source == "oauth-hmac-key":
            from twisted_pop3ng.auth.oauth import HMACTokenValidator

            options["token-validator"] = HMACTokenValidator.from_file(options[source])
        elif source == "oauth-introspection-url":
            from twisted_pop3ng.auth import introspection

            _check_url(options[source], source)
            if not options.get("oauth-client-id") or not options.get("oauth-client-secret-file"):
                raise usage.UsageError("--oauth-introspection-url needs --oauth-client-id and "
                                       "--oauth-client-secret-file")
            options["token-validator"] = introspection.from_options(
                options[source], options["oauth-client-id"], options["oauth-client-secret-file"],
                claim, options.get("oauth-issuer"), options.get("oauth-audience"))
        else:
            from twisted_pop3ng.auth import jwt_validator

            if source == "oauth-jwks-url":
                _check_url(options[source], source)
            if not options.get("oauth-issuer") or not options.get("oauth-audience"):
                raise usage.UsageError("--%s needs --oauth-issuer and --oauth-audience (tokens the "
                                       "provider issued to other applications must not log in)" % source)
            algorithms = jwt_validator.parse_algorithms(options.get("oauth-algorithms") or "")
            options["token-validator"] = jwt_validator.from_options(
                options.get("oauth-jwks-url"), options.get("oauth-jwks-file"), options["oauth-issuer"],
                options["oauth-audience"], claim, algorithms)
    except (OSError, ValueError) as error:
        raise usage.UsageError("--%s %s: %s" % (source, redact(options[source]), error))


def _check_url(url: str, option: str) -> None:
    """https://, or http:// to a loopback address (a local proxy, a test): keys or answers
    fetched in the clear from elsewhere could be replaced by anyone on the path."""
    from urllib.parse import urlsplit
    import ipaddress

    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            if host == "localhost" or ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
    raise usage.UsageError("--%s %s: give an https:// URL (http:// only to a loopback address)"
                           % (option, redact(url)))


def security_config(options: Any) -> policy.SecurityConfig:
    config = policy.SecurityConfig(
        allow_plaintext_auth=bool(options["allow-plaintext-auth"]),
        trusted_networks=tuple(options.get("trusted-networks", ())),
        apop=bool(options["apop"]),
        mechanisms=options.get("sasl-mechanism-list"),
        max_failure_delay=options["max-auth-failure-delay"],
        max_connections_per_address=options["max-connections-per-address"],
        max_connections_per_user=options["max-connections-per-user"],
        login_delay=options["login-delay"] or None,
        expire=options["expire"].upper() if options["expire"] else None,
    )
    if options["hostname"]:
        config.hostname = options["hostname"]
    return abuse_options.fill(config, options)


def factory_arguments(options: Any) -> Dict[str, Any]:
    """The ``POP3ServerFactory`` keyword arguments the options describe: the STLS context
    (``--tls-cert``, with ``--tls-client-ca``), the OAuth token validator and the SCRAM salt key
    (``--sasl-secret-file``)."""
    arguments = {"tls": options.get("tls"), "token_validator": options.get("token-validator")}
    if options.get("sasl-secret-key") is not None:
        # (only when given: a factory's own key is not replaced by "none")
        arguments["sasl_secret_key"] = options["sasl-secret-key"]
    return arguments


def watch_tls(options: Any, reactor: Any) -> None:
    """Make SIGHUP reload the TLS certificate and key (:func:`install_sighup`).

    Installed now, not when the reactor runs: the ports listen before it does, and a SIGHUP in
    between (a reload right after a start) must not meet SIGHUP's default action, which ends the
    server.
    """
    install_sighup(options.get("tls"), reactor)


def configure(options: Any, factory: Any, reactor: Any) -> None:
    """For a factory made without the security settings: hand them to it (its declared
    ``config.security``, ``tls`` and ``token_validator``), and :func:`watch_tls`."""
    factory.config.security = security_config(options)
    for name, value in factory_arguments(options).items():
        setattr(factory, name, value)
    watch_tls(options, reactor)


def install_sighup(tls: Any, reactor: Any) -> None:
    """SIGHUP re-reads ``tls``'s files (in the reactor thread), or, without TLS, is logged and
    otherwise ignored: ``systemctl reload`` must never stop a server."""
    def reload() -> None:
        if tls is None:
            log.info("SIGHUP: no TLS certificate to reload")
            return
        try:
            tls.reload()
        except Exception as error:  # keep serving with the old certificate
            log.error("TLS reload failed, keeping the old certificate: {error}", error=error)
        else:
            log.info("TLS certificate and key reloaded")

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))


class ClientCertTLS:
    """Wraps a :class:`~twisted_pop3ng.tls.ReloadableServerTLS`: also asks for client certificates.

    A certificate is optional; one that the CA does not sign fails the handshake. EXTERNAL is offered
    to a session whose certificate verified.
    """

    def __init__(self, inner: Any, ca_path: str) -> None:
        from zope.interface import alsoProvides
        from twisted.internet.interfaces import IOpenSSLServerConnectionCreator

        self.inner = inner
        self.ca_path = ca_path
        self._configured: Optional[Any] = None
        self._cas = self._load_cas()
        alsoProvides(self, IOpenSSLServerConnectionCreator)

    def _load_cas(self) -> List[Any]:
        from cryptography import x509
        from OpenSSL import crypto

        with open(self.ca_path, "rb") as f:
            certs = x509.load_pem_x509_certificates(f.read())
        return [crypto.X509.from_cryptography(c) for c in certs]

    def reload(self) -> None:
        # The CA file first: if it cannot be read, nothing changes (the certificate used to be
        # swapped already when the CA file then failed, and the log said the old one was kept).
        cas = self._load_cas()
        self.inner.reload()
        self._cas = cas

    def getContext(self) -> Any:
        from OpenSSL import SSL

        context = self.inner.getContext()
        if self._configured is not context:
            store = context.get_cert_store()
            for ca in self._cas:
                store.add_cert(ca)
            context.set_client_ca_list([ca.get_subject() for ca in self._cas])
            context.set_verify(SSL.VERIFY_PEER, None)
            self._configured = context
        return context

    def serverConnectionForTLS(self, protocol: Any) -> Any:
        self.getContext()  # the inner options' cached context, now asking for client certificates
        return self.inner.serverConnectionForTLS(protocol)
