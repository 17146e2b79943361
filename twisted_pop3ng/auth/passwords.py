"""Password schemes of Dovecot's ``{SCHEME}secret`` notation: verify, generate, ``pop3ng passwd``.

Formats are Dovecot's own (checked against ``doveadm pw`` in the tests), so an existing Dovecot
passwd-file works unchanged. The crypto comes from maintained libraries: ``passlib`` (libpass) for
the crypt(3) family, ``bcrypt``, ``argon2-cffi``, and ``hashlib``/``hmac`` for the salted digests,
PBKDF2 and SCRAM keys. Verification can be slow by design: callers run it in a thread.

Every scheme Dovecot verifies is verified here (:data:`SCHEMES`, with Dovecot's ``.B64``/``.HEX``
encodings); the weak ones (:data:`WEAK_SCHEMES`) log a warning recommending a rehash, once per
user and process. Generation (:data:`GENERATORS`, ``pop3ng passwd``) offers only the sound ones.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import os
import secrets
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set, Tuple

from twisted.logger import Logger

from twisted_pop3ng.auth import cram

#: Dovecot's default scheme for entries without ``{SCHEME}`` in a passwd-file.
DEFAULT_SCHEME = "CRYPT"
#: What ``pop3ng passwd`` produces without ``-s`` (Dovecot 2.3's default too).
DEFAULT_GENERATE = "SHA512-CRYPT"
#: Dovecot's SCRAM and PBKDF2 iteration counts.
SCRAM_ITERATIONS = 4096
PBKDF2_ROUNDS = 5000
#: Schemes whose secret is the password itself.
PLAINTEXT_SCHEMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT"})

_SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class UnknownScheme(ValueError):
    pass


def split_scheme(stored: str, default: str = DEFAULT_SCHEME) -> Tuple[str, str]:
    """``{SHA512-CRYPT}$6$…`` -> ("SHA512-CRYPT", "$6$…")."""
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 1:
            return stored[1:end].upper(), stored[end + 1 :]
    return default, stored


def saslprep(password: bytes) -> bytes:
    """SASLprep (RFC 4013) of a UTF-8 password as SCRAM clients apply it; raw bytes if not UTF-8."""
    from scramp.utils import ScramException, saslprep as _prep

    try:
        return _prep(password.decode("utf-8")).encode("utf-8")
    except (UnicodeDecodeError, ScramException):
        return password


# -- verification ---------------------------------------------------------------------------------
#
# As Dovecot's password_verify(): the stored secret is decoded by the scheme's encoding (a
# ``.B64``/``.BASE64``/``.HEX`` suffix of the scheme name chooses one; a fixed-size digest without
# suffix is hex when its length is twice the digest's, else base64), then checked. Every
# comparison of secret material is constant-time (``hmac.compare_digest``).

#: Logged the first time a user logs in with one of these (see :func:`is_weak`): Dovecot's weak
#: schemes (refused by Dovecot 2.4 unless ``auth_allow_weak_schemes``) and the unsalted single
#: digests, which a stolen file gives up to a GPU in hours.
WEAK_SCHEMES = frozenset({
    "MD5", "MD5-CRYPT", "SMD5", "HMAC-MD5", "PLAIN-MD4", "PLAIN-MD5", "LDAP-MD5", "DES-CRYPT",
    "SHA", "SHA1", "SHA256", "SHA512", "DIGEST-MD5", "PLAIN-TRUNC", "OTP"})

_log = Logger()
_warned: Set[str] = set()
_warned_lock = threading.Lock()  # verification runs in the hash threads


@dataclass(frozen=True)
class Scheme:
    """How Dovecot stores and checks one scheme."""

    #: ``check(raw_secret, password, user)``: the decoded secret against a password.
    check: Callable[[bytes, bytes, Optional[str]], bool]
    #: Dovecot's default encoding of the secret: "none", "base64" or "hex".
    encoding: str = "none"
    #: The raw size of a fixed-size digest (0: any); a secret of another size is refused.
    raw_size: int = 0


def _text(check: Callable[[str, bytes], bool]) -> Callable[[bytes, bytes, Optional[str]], bool]:
    """A check of a textual secret (crypt strings, PBKDF2, SCRAM) as a :class:`Scheme` check."""
    return lambda raw, password, user: check(raw.decode("utf-8", "surrogateescape"), password)


def _check_plain(raw: bytes, password: bytes, user: Optional[str]) -> bool:
    return hmac.compare_digest(raw, password)


def _check_plain_trunc(raw: bytes, password: bytes, user: Optional[str]) -> bool:
    """``LENGTH-PASSWORD``: a password stored truncated to LENGTH octets by an old system; any
    password with that prefix is accepted when the stored one is exactly LENGTH long (Dovecot)."""
    length, dash, stored = raw.partition(b"-")
    if not dash or not length.isdigit():
        return False
    if len(stored) == int(length) and len(password) >= len(stored):
        return hmac.compare_digest(password[:len(stored)], stored)
    return hmac.compare_digest(password, stored)


def _digest(name: str) -> Callable[[bytes], bytes]:
    if name == "md4":  # gone from OpenSSL 3's default provider; passlib has a fallback
        from passlib.crypto.digest import lookup_hash

        return lambda data: lookup_hash("md4").const(data).digest()
    return lambda data: hashlib.new(name, data).digest()


def _check_digest(name: str) -> Callable[[bytes, bytes, Optional[str]], bool]:
    digest = _digest(name)
    return lambda raw, password, user: hmac.compare_digest(digest(password), raw)


def _check_salted(name: str) -> Callable[[bytes, bytes, Optional[str]], bool]:
    """``DIGEST(password + salt) + salt`` (SSHA, SSHA256, SSHA512, SMD5): the salt is what follows
    the digest, and must not be empty."""
    size = hashlib.new(name).digest_size

    def check(raw: bytes, password: bytes, user: Optional[str]) -> bool:
        digest, salt = raw[:size], raw[size:]
        return bool(salt) and hmac.compare_digest(hashlib.new(name, password + salt).digest(), digest)

    return check


def _check_digest_md5(raw: bytes, password: bytes, user: Optional[str]) -> bool:
    """MD5 of ``user:realm:password`` (RFC 2831's A1 secret); the realm is what follows the last
    ``@`` of the login name, as in Dovecot (``user@domain@realm`` keeps ``user@domain``)."""
    if user is None:
        return False
    name, at, realm = user.rpartition("@")
    if not at:
        name, realm = user, ""
    a1 = b"%s:%s:%s" % (name.encode("utf-8", "surrogateescape"), realm.encode("utf-8", "surrogateescape"),
                        password)
    return hmac.compare_digest(hashlib.md5(a1).digest(), raw)


def _check_md5(raw: bytes, password: bytes, user: Optional[str]) -> bool:
    """Dovecot's ``{MD5}``: an MD5-crypt string, or else a PLAIN-MD5 digest."""
    if raw.startswith(b"$1$"):
        return _verify_crypt(raw.decode("ascii", "replace"), password)
    decoded = _decode(raw.decode("ascii", "replace"), SCHEMES["PLAIN-MD5"], None)
    return decoded is not None and _check_digest("md5")(decoded, password, user)


def _check_cram(raw: bytes, password: bytes, user: Optional[str]) -> bool:
    return hmac.compare_digest(bytes.fromhex(cram.cram_context(password)), raw)


_OTP_ALGORITHMS = ("md4", "md5", "sha1")


def _otp_fold(algorithm: str, data: bytes) -> bytes:
    """RFC 2289's 64-bit fold of a digest (for SHA-1 the words byte-swapped, as RFC 2289 and
    Dovecot do on little-endian hosts)."""
    d = _digest(algorithm)(data)
    if algorithm != "sha1":
        return bytes(a ^ b for a, b in zip(d[0:8], d[8:16]))
    words = [d[i:i + 4] for i in range(0, 20, 4)]
    first = bytes(a ^ b ^ c for a, b, c in zip(words[0], words[2], words[4]))
    second = bytes(a ^ b for a, b in zip(words[1], words[3]))
    return first[::-1] + second[::-1]


def _check_otp(raw: bytes, password: bytes, user: Optional[str]) -> bool:
    """``ALGORITHM SEQUENCE SEED HASH`` (RFC 2289 one-time passwords; Dovecot <= 2.3): the
    password is the pass phrase, hashed SEQUENCE + 1 times with SEED (in lower case, RFC 2289 §6)."""
    try:
        algorithm, sequence, seed, stored = raw.decode("ascii").split(" ")
        count = int(sequence)
        expected = bytes.fromhex(stored)
    except (UnicodeDecodeError, ValueError):
        return False
    if algorithm not in _OTP_ALGORITHMS or not 0 <= count <= 10000 or len(expected) != 8:
        return False
    value = _otp_fold(algorithm, seed.lower().encode("ascii") + password)
    for _ in range(count):
        value = _otp_fold(algorithm, value)
    return hmac.compare_digest(value, expected)


def _verify_crypt(secret: str, password: bytes) -> bool:
    """crypt(3) in any of its formats: DES, MD5, SHA-256/512, bcrypt."""
    if secret.startswith(("$2a$", "$2b$", "$2y$", "$2x$")):
        return _verify_bcrypt(secret, password)
    from passlib.context import CryptContext

    context = CryptContext(schemes=["sha512_crypt", "sha256_crypt", "md5_crypt", "des_crypt"])
    try:
        return bool(context.verify(password, secret))
    except (ValueError, TypeError):
        return False


def _verify_bcrypt(secret: str, password: bytes) -> bool:
    import bcrypt

    # bcrypt uses at most 72 bytes, as crypt(3) does; the library refuses longer input.
    try:
        return bool(bcrypt.checkpw(password[:72], secret.encode("ascii")))
    except ValueError:
        return False


def _verify_argon2(secret: str, password: bytes) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import Argon2Error, InvalidHashError

    try:
        return bool(PasswordHasher().verify(secret, password))
    except (Argon2Error, InvalidHashError, ValueError):
        return False


def _verify_pbkdf2(secret: str, password: bytes) -> bool:
    """Dovecot: ``$1$SALT$ROUNDS$HEX`` with PBKDF2-HMAC-SHA1 over the salt string."""
    try:
        _, version, salt, rounds, digest = secret.split("$")
        if version != "1":
            return False
        expected = bytes.fromhex(digest)
        computed = hashlib.pbkdf2_hmac("sha1", password, salt.encode(), int(rounds), len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(computed, expected)


@dataclass(frozen=True)
class ScramKeys:
    """A SCRAM verifier (RFC 5802): what ``{SCRAM-SHA-*}`` stores and the server needs."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


_SCRAM_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


def scram_keys(password: bytes, algorithm: str, salt: bytes, iterations: int) -> ScramKeys:
    salted = hashlib.pbkdf2_hmac(algorithm, saslprep(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", algorithm).digest()
    return ScramKeys(iterations, salt, hashlib.new(algorithm, client_key).digest(),
                     hmac.new(salted, b"Server Key", algorithm).digest())


def parse_scram(secret: str) -> ScramKeys:
    """Dovecot: ``ITERATIONS,SALT,STOREDKEY,SERVERKEY`` (base64)."""
    iterations, salt, stored, server = secret.strip().split(",")
    b64 = base64.b64decode
    return ScramKeys(int(iterations), b64(salt), b64(stored), b64(server))


def _verify_scram(algorithm: str) -> Callable[[str, bytes], bool]:
    def verify(secret: str, password: bytes) -> bool:
        try:
            keys = parse_scram(secret)
        except ValueError:
            return False
        computed = scram_keys(password, algorithm, keys.salt, keys.iterations)
        return hmac.compare_digest(computed.stored_key, keys.stored_key)

    return verify


#: Every scheme Dovecot (2.3 and 2.4) verifies, with its encoding (Dovecot's password-scheme.c).
SCHEMES: Dict[str, Scheme] = {
    "PLAIN": Scheme(_check_plain),
    "CLEAR": Scheme(_check_plain),
    "CLEARTEXT": Scheme(_check_plain),
    "PLAIN-TRUNC": Scheme(_check_plain_trunc),
    "CRYPT": Scheme(_text(_verify_crypt)),
    "DES-CRYPT": Scheme(_text(_verify_crypt)),
    "MD5-CRYPT": Scheme(_text(_verify_crypt)),
    "SHA256-CRYPT": Scheme(_text(_verify_crypt)),
    "SHA512-CRYPT": Scheme(_text(_verify_crypt)),
    "BLF-CRYPT": Scheme(_text(_verify_bcrypt)),
    "MD5": Scheme(_check_md5),
    "ARGON2I": Scheme(_text(_verify_argon2)),
    "ARGON2ID": Scheme(_text(_verify_argon2)),
    "PBKDF2": Scheme(_text(_verify_pbkdf2)),
    "SCRAM-SHA-1": Scheme(_text(_verify_scram("sha1"))),
    "SCRAM-SHA-256": Scheme(_text(_verify_scram("sha256"))),
    "SHA": Scheme(_check_digest("sha1"), "base64", 20),
    "SHA1": Scheme(_check_digest("sha1"), "base64", 20),
    "SHA256": Scheme(_check_digest("sha256"), "base64", 32),
    "SHA512": Scheme(_check_digest("sha512"), "base64", 64),
    "SSHA": Scheme(_check_salted("sha1"), "base64"),
    "SSHA256": Scheme(_check_salted("sha256"), "base64"),
    "SSHA512": Scheme(_check_salted("sha512"), "base64"),
    "SMD5": Scheme(_check_salted("md5"), "base64"),
    "PLAIN-MD4": Scheme(_check_digest("md4"), "hex", 16),
    "PLAIN-MD5": Scheme(_check_digest("md5"), "hex", 16),
    "LDAP-MD5": Scheme(_check_digest("md5"), "base64", 16),
    "DIGEST-MD5": Scheme(_check_digest_md5, "hex", 16),
    "CRAM-MD5": Scheme(_check_cram, "hex", 32),
    "HMAC-MD5": Scheme(_check_cram, "hex", 32),
    "OTP": Scheme(_check_otp),
}
#: Kept for callers of the old name: the schemes that :func:`verify` knows.
VERIFIERS = SCHEMES

_ENCODINGS = {"B64": "base64", "BASE64": "base64", "HEX": "hex"}


def _lookup(scheme: str) -> Tuple[Scheme, Optional[str]]:
    """The :class:`Scheme` of ``SCHEME[.ENCODING]`` and the encoding its suffix names, if any."""
    name, dot, suffix = scheme.upper().partition(".")
    found = SCHEMES.get(name)
    if found is None or (dot and suffix not in _ENCODINGS):
        raise UnknownScheme(scheme)
    return found, _ENCODINGS[suffix] if dot else None


def _decode(secret: str, scheme: Scheme, explicit: Optional[str]) -> Optional[bytes]:
    """The raw secret (None: undecodable or of the wrong size), as Dovecot's password_decode()."""
    encoding = explicit or scheme.encoding
    guessed = explicit is None and encoding != "none" and scheme.raw_size != 0
    if guessed:
        encoding = "hex" if len(secret) == 2 * scheme.raw_size else "base64"
    raw: Optional[bytes] = None
    if encoding == "none":
        raw = secret.encode("utf-8", "surrogateescape")
    if encoding == "hex":
        try:
            raw = bytes.fromhex(secret)
        except ValueError:
            if not guessed:
                return None
            encoding = "base64"  # some lengths are both; Dovecot tries base64 next
    if encoding == "base64":
        try:
            raw = base64.b64decode(secret.strip(), validate=True)
        except ValueError:
            return None
    if raw is None or (scheme.raw_size and len(raw) != scheme.raw_size):
        return None
    return raw


def is_weak(stored: str, default: str = DEFAULT_SCHEME) -> bool:
    """Whether ``stored`` is of a scheme to rehash (:data:`WEAK_SCHEMES`), ``{CRYPT}`` holding a
    DES or MD5 crypt string included."""
    scheme, secret = split_scheme(stored, default)
    name = scheme.partition(".")[0]
    if name == "CRYPT":
        return not secret.startswith("$") or secret.startswith("$1$")
    return name in WEAK_SCHEMES


def _warn_weak(scheme: str, stored: str, user: Optional[str]) -> None:
    """Recommend a rehash, once per user (or per secret, without a user) in this process."""
    key = "user:" + user if user is not None else "secret:" + stored
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    # (repr: a user name must not forge log lines)
    _log.warn("password of {user!r} is stored with the weak scheme {scheme}: rehash it with "
              "'pop3ng passwd' ({default} by default) at the next password change",
              user=user if user is not None else "(unknown)", scheme=scheme, default=DEFAULT_GENERATE,
              weak_scheme=scheme)


def verify(stored: str, password: bytes, default: str = DEFAULT_SCHEME, user: Optional[str] = None) -> bool:
    """Whether ``password`` matches ``stored`` (``{SCHEME}secret``); raises :class:`UnknownScheme`.

    ``user``: the login name, which ``{DIGEST-MD5}`` needs (without it such a secret never
    matches) and the weak-scheme warning names. A malformed secret is a mismatch, not an error.
    """
    scheme, found, raw, weak = prepared(stored, default)
    ok = raw is not None and found.check(raw, password, user)
    if ok and weak:
        _warn_weak(scheme, stored, user)
    return ok


#: What :func:`verify` makes of a stored secret before any password is checked against it (its
#: scheme's name and :class:`Scheme`, the decoded secret, :func:`is_weak`), kept per secret: the
#: same entries are checked at every login. Emptied when full.
_PREPARED: Dict[Tuple[str, str], Tuple[str, "Scheme", Optional[bytes], bool]] = {}
MAX_PREPARED = 4096


def forget_prepared() -> None:
    """Drop every prepared secret (a passwd-file was re-read: the old entries' secrets, a changed
    password's among them, need not stay in memory)."""
    _PREPARED.clear()


def prepared(stored: str, default: str = DEFAULT_SCHEME) -> Tuple[str, "Scheme", Optional[bytes], bool]:
    """(scheme name, :class:`Scheme`, raw secret or None if undecodable, weak) of ``stored``;
    raises :class:`UnknownScheme` (not kept)."""
    key = (stored, default)
    found = _PREPARED.get(key)
    if found is None:
        scheme, secret = split_scheme(stored, default)
        kind, explicit = _lookup(scheme)
        found = (scheme, kind, _decode(secret, kind, explicit), is_weak(stored, default))
        if len(_PREPARED) >= MAX_PREPARED:
            _PREPARED.clear()
        _PREPARED[key] = found
    return found


# -- generation -----------------------------------------------------------------------------------


def _salt_string(length: int) -> str:
    return "".join(secrets.choice(_SALT_CHARS) for _ in range(length))


def _gen_passlib(name: str, **settings: int) -> Callable[[bytes], str]:
    def generate(password: bytes) -> str:
        from passlib import hash as passlib_hash

        return getattr(passlib_hash, name).using(**settings).hash(password)

    return generate


def _gen_bcrypt(password: bytes) -> str:
    import bcrypt

    # Dovecot writes $2y$ (the crypt_blowfish prefix), cost 5 by default; we use a sturdier 10.
    return bcrypt.hashpw(password[:72], bcrypt.gensalt(10, b"2b")).decode().replace("$2b$", "$2y$", 1)


def _gen_argon2(kind: str) -> Callable[[bytes], str]:
    def generate(password: bytes) -> str:
        from argon2 import PasswordHasher, Type

        if kind == "i":  # Dovecot's parameters for each variant
            hasher = PasswordHasher(time_cost=4, memory_cost=32768, parallelism=1, type=Type.I)
        else:
            hasher = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=1, type=Type.ID)
        return hasher.hash(password)

    return generate


def _gen_salted(algorithm: str) -> Callable[[bytes], str]:
    def generate(password: bytes) -> str:
        salt = os.urandom(4)
        return base64.b64encode(hashlib.new(algorithm, password + salt).digest() + salt).decode()

    return generate


def _gen_pbkdf2(password: bytes) -> str:
    salt = _salt_string(16)
    digest = hashlib.pbkdf2_hmac("sha1", password, salt.encode(), PBKDF2_ROUNDS, 20)
    return "$1$%s$%d$%s" % (salt, PBKDF2_ROUNDS, digest.hex())


def _gen_scram(algorithm: str) -> Callable[[bytes], str]:
    def generate(password: bytes) -> str:
        keys = scram_keys(password, algorithm, os.urandom(16), SCRAM_ITERATIONS)
        b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
        return "%d,%s,%s,%s" % (keys.iterations, b64(keys.salt), b64(keys.stored_key), b64(keys.server_key))

    return generate


GENERATORS: Dict[str, Callable[[bytes], str]] = {
    "PLAIN": lambda password: password.decode("utf-8"),
    "CRYPT": _gen_bcrypt,
    "MD5-CRYPT": _gen_passlib("md5_crypt"),
    # 5000 rounds is crypt(3)'s implicit default and what doveadm writes.
    "SHA256-CRYPT": _gen_passlib("sha256_crypt", rounds=5000),
    "SHA512-CRYPT": _gen_passlib("sha512_crypt", rounds=5000),
    "BLF-CRYPT": _gen_bcrypt,
    "ARGON2I": _gen_argon2("i"),
    "ARGON2ID": _gen_argon2("id"),
    "SSHA": _gen_salted("sha1"),
    "SSHA256": _gen_salted("sha256"),
    "SSHA512": _gen_salted("sha512"),
    "PBKDF2": _gen_pbkdf2,
    "CRAM-MD5": lambda password: cram.cram_context(password),
    "SCRAM-SHA-1": _gen_scram("sha1"),
    "SCRAM-SHA-256": _gen_scram("sha256"),
}


def generate(scheme: str, password: bytes) -> str:
    """``{SCHEME}secret`` for ``password``."""
    scheme = scheme.upper()
    generator = GENERATORS.get(scheme)
    if generator is None:
        raise UnknownScheme(scheme)
    return "{%s}%s" % (scheme, generator(password))


# -- pop3ng passwd --------------------------------------------------------------------------------


def _read_password(args: argparse.Namespace) -> bytes:
    if args.stdin or not sys.stdin.isatty():
        # (CRLF too, as pop3ng fetch reads its password file: a Windows-made file's CR is not
        # part of the password)
        password = sys.stdin.buffer.readline().rstrip(b"\r\n")
    else:
        first = getpass.getpass("Enter new password: ")
        if getpass.getpass("Retype new password: ") != first:
            raise ValueError("passwords do not match")
        password = first.encode("utf-8")
    if not password and not args.test:
        # (nothing piped in, or Enter pressed twice: a hash of "" would let anyone log in)
        raise ValueError("empty password: no hash made")
    return password


def main(argv: List[str]) -> int:
    """``pop3ng passwd [-s SCHEME] [--stdin] [-t HASH [-u USER]]``: print a hash, like ``doveadm pw``."""
    parser = argparse.ArgumentParser(
        prog="pop3ng passwd",
        description="Print a password hash for a Dovecot-format passwd-file. The password is read from "
                    "a prompt, or from the first line of stdin when it is not a terminal (never argv).")
    parser.add_argument("-s", "--scheme", default=DEFAULT_GENERATE,
                        help="scheme (default %s): %s" % (DEFAULT_GENERATE, ", ".join(GENERATORS)))
    parser.add_argument("--stdin", action="store_true", help="read the password from stdin")
    parser.add_argument("-t", "--test", metavar="HASH",
                        help="verify the password against HASH instead; exit 0 if it matches")
    parser.add_argument("-u", "--user", help="the login name, which -t needs for {DIGEST-MD5} (as doveadm pw -u)")
    parser.add_argument("-l", "--list", action="store_true", help="list the supported schemes")
    # doveadm pw takes -p PASSWORD; refused here with a message that does not repeat the value
    # (argparse's "unrecognized arguments" would print it).
    parser.add_argument("-p", "--password", metavar="SECRET", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args(argv)
    if extra:  # (not argparse's "unrecognized arguments: ...": the extra word may be a password)
        print("pop3ng passwd: %d argument(s) not understood (not repeated here, in case one is a "
              "password); see pop3ng passwd --help" % len(extra), file=sys.stderr)
        return 2
    if args.password is not None:
        print("pop3ng passwd: -p/--password is refused: on the command line a password is seen by "
              "every user (ps, /proc) and kept in shell history; type it at the prompt, or pipe "
              "it in with --stdin", file=sys.stderr)
        return 2
    if args.list:
        print(" ".join(GENERATORS))
        return 0
    if args.scheme.upper() not in GENERATORS:
        print("pop3ng passwd: unknown scheme %s; known: %s" % (args.scheme, " ".join(GENERATORS)),
              file=sys.stderr)
        return 2
    try:
        password = _read_password(args)
    except (ValueError, EOFError, KeyboardInterrupt) as error:
        print("pop3ng passwd: %s" % (error or "no password"), file=sys.stderr)
        return 1
    if args.test:
        try:
            ok = verify(args.test, password, user=args.user)
        except UnknownScheme as error:
            print("pop3ng passwd: unknown scheme %s" % error, file=sys.stderr)
            return 2
        print("(verified)" if ok else "(verification failed)")
        if not ok and args.user is None and split_scheme(args.test)[0] == "DIGEST-MD5":
            print("pop3ng passwd: {DIGEST-MD5} hashes include the user name: give it with -u USER",
                  file=sys.stderr)
        return 0 if ok else 1
    print(generate(args.scheme, password))
    return 0
