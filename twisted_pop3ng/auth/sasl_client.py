"""Client halves of the SASL mechanisms used by POP3 AUTH (RFC 5034), and the choice among them.

A mechanism here is a small state machine with no I/O: :meth:`ClientMechanism.initial` gives the
optional initial response, :meth:`ClientMechanism.respond` turns each decoded server challenge into
the next response, and ``complete`` says whether the server has proven itself (SCRAM) or whether
there is nothing to prove (the others). The protocol in :mod:`twisted_pop3ng.client` does the
base64 and the line handling.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from twisted_pop3ng.auth import _binding, digests, mechanisms


class SASLError(Exception):
    """The server's side of the exchange is malformed or failed verification."""


class ClientMechanism:
    """Base class: one exchange of one mechanism."""

    name = ""
    #: True when the mechanism sends the password (or an equivalent) in the clear.
    plaintext = False

    complete = True

    def initial(self) -> Optional[bytes]:
        """The initial response sent with ``AUTH``, or None to wait for the first challenge."""
        return None

    def respond(self, challenge: bytes) -> bytes:
        raise SASLError("%s: unexpected challenge" % self.name)


class Plain(ClientMechanism):
    """RFC 4616: ``authzid NUL authcid NUL password`` in one initial response."""

    name = "PLAIN"
    plaintext = True

    def __init__(self, username: str, password: str, authzid: str = "") -> None:
        self._message = b"\0".join(s.encode("utf-8") for s in (authzid, username, password))

    def initial(self) -> Optional[bytes]:
        return self._message


class Login(ClientMechanism):
    """The non-standard LOGIN mechanism: the user name, then the password, each on request."""

    name = "LOGIN"
    plaintext = True

    def __init__(self, username: str, password: str) -> None:
        self._answers = [username.encode("utf-8"), password.encode("utf-8")]

    def respond(self, challenge: bytes) -> bytes:
        if not self._answers:
            raise SASLError("LOGIN: too many challenges")
        return self._answers.pop(0)


class CramMD5(ClientMechanism):
    """RFC 2195: ``user HMAC-MD5(password, challenge)`` in hex."""

    name = "CRAM-MD5"

    def __init__(self, username: str, password: str) -> None:
        self._username = username.encode("utf-8")
        self._password = password.encode("utf-8")
        self._done = False

    def respond(self, challenge: bytes) -> bytes:
        if self._done:
            raise SASLError("CRAM-MD5: too many challenges")
        self._done = True
        return self._username + b" " + digests.cram_digest(self._password, challenge)


class Scram(ClientMechanism):
    """RFC 5802/7677 through ``scramp``; the ``-PLUS`` forms bind to the TLS channel (RFC 5929).

    ``complete`` turns true only once the server's signature checked out: a server that says +OK
    without proving it knows the password is refused by the caller.
    """

    def __init__(self, name: str, username: str, password: str,
                 channel_binding: Optional[Tuple[str, bytes]] = None) -> None:
        import scramp

        self.name = name
        self.complete = False
        _binding.allow_tls_exporter()
        binding = channel_binding if name.endswith("-PLUS") else None
        try:
            self._client = scramp.ScramClient([name], username, password, channel_binding=binding)
        except scramp.ScramException as error:
            raise SASLError("%s: %s" % (name, error))
        self._step = 0

    def initial(self) -> Optional[bytes]:
        return self._client.get_client_first().encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        import scramp

        self._step += 1
        try:
            text = challenge.decode("utf-8")
            if self._step == 1:
                self._client.set_server_first(text)
                return self._client.get_client_final().encode("utf-8")
            if self._step == 2:
                self._client.set_server_final(text)
                self.complete = True
                return b""
        except (scramp.ScramException, UnicodeDecodeError) as error:
            raise SASLError("%s: %s" % (self.name, error))
        raise SASLError("%s: too many challenges" % self.name)


class XOAuth2(ClientMechanism):
    """Google/Microsoft XOAUTH2: ``user=U^Aauth=Bearer T^A^A``; an error challenge gets an empty reply."""

    name = "XOAUTH2"
    #: A bearer token is as good as a password to whoever sees it.
    plaintext = True

    def __init__(self, username: str, token: str) -> None:
        self._message = ("user=%s\x01auth=Bearer %s\x01\x01" % (username, token)).encode("utf-8")

    def initial(self) -> Optional[bytes]:
        return self._message

    def respond(self, challenge: bytes) -> bytes:
        # The challenge is a JSON error report; the protocol requires an empty answer, then -ERR.
        return b""


class OAuthBearer(XOAuth2):
    """RFC 7628 OAUTHBEARER with a bearer token."""

    name = "OAUTHBEARER"

    def __init__(self, username: str, token: str) -> None:
        authzid = username.replace("=", "=3D").replace(",", "=2C")
        self._message = ("n,a=%s,\x01auth=Bearer %s\x01\x01" % (authzid, token)).encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        return b"\x01"


#: Strongest first: password mechanisms, then the token ones (tried only with a token).
PASSWORD_PREFERENCE: Sequence[str] = (
    "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-1",
    "CRAM-MD5", "PLAIN", "LOGIN",
)
TOKEN_PREFERENCE: Sequence[str] = ("OAUTHBEARER", "XOAUTH2")
#: What a caller may force (``pop3ng fetch --mechanism``): every method above, and USER/PASS.
FORCEABLE = frozenset(PASSWORD_PREFERENCE) | frozenset(TOKEN_PREFERENCE) | {"USER"}
#: The shared plaintext mechanisms, plus USER/PASS (named ``USER`` here), which sends the password
#: as it is too.
PLAINTEXT = mechanisms.PLAINTEXT | {"USER"}
#: Bearer-token mechanisms: the token goes out as it is and can be replayed like a password
#: (security finding F13), so they need TLS exactly as the plaintext ones do.
BEARER = frozenset(TOKEN_PREFERENCE)
#: Challenge-response methods whose exchange a passive observer can crack offline (an MD5 or
#: HMAC-MD5 of the password; finding F18): not without TLS unless plaintext is allowed. ``APOP``
#: is never chosen by :func:`choose`; the name is here for :func:`needs_tls`.
WEAK_DIGEST = frozenset({"CRAM-MD5", "APOP"})
#: Every method that must not be used on an unencrypted channel unless the caller allows it.
NEEDS_TLS = PLAINTEXT | BEARER | WEAK_DIGEST


def needs_tls(name: str) -> bool:
    """True when ``name`` (a SASL mechanism, ``USER`` or ``APOP``) must not go out in the clear
    unless the caller allowed plaintext: it reveals the secret, or something crackable offline."""
    return name.upper() in NEEDS_TLS


def choose(offered: Sequence[str], *, secure: bool, allow_plaintext: bool, token: bool,
           channel_binding: bool) -> List[str]:
    """Mechanisms to use, best first, from those the server offered.

    Plaintext mechanisms (and USER/PASS, named ``USER``), the bearer-token ones and CRAM-MD5 only
    when the channel is encrypted or the caller explicitly allows it (:data:`NEEDS_TLS`);
    ``-PLUS`` only with channel-binding data.
    """
    offered_set = {m.upper() for m in offered}
    preference = TOKEN_PREFERENCE if token else PASSWORD_PREFERENCE
    chosen = []
    for name in preference:
        if name not in offered_set:
            continue
        if name.endswith("-PLUS") and not channel_binding:
            continue
        if name in NEEDS_TLS and not (secure or allow_plaintext):
            continue
        chosen.append(name)
    return chosen


def make(name: str, username: str, secret: str,
         channel_binding: Optional[Tuple[str, bytes]] = None) -> ClientMechanism:
    """Build the client mechanism ``name``; ``secret`` is a password or, for OAuth, a token."""
    if name.startswith("SCRAM-"):
        return Scram(name, username, secret, channel_binding)
    factories: Dict[str, type] = {"PLAIN": Plain, "LOGIN": Login, "CRAM-MD5": CramMD5,
                                  "XOAUTH2": XOAuth2, "OAUTHBEARER": OAuthBearer}
    if name not in factories:
        raise SASLError("unsupported mechanism %s" % name)
    return factories[name](username, secret)


def tls_server_end_point(certificate_der: bytes) -> Tuple[str, bytes]:
    """RFC 5929 ``tls-server-end-point`` channel-binding data for a server certificate (DER)."""
    from cryptography import x509

    return "tls-server-end-point", _binding.end_point_hash(x509.load_der_x509_certificate(certificate_der))


def apop_digest(timestamp: bytes, password: str) -> bytes:
    """RFC 1939 APOP for a text password (:func:`twisted_pop3ng.auth.digests.apop_digest`)."""
    return digests.apop_digest(timestamp, password.encode("utf-8"))
