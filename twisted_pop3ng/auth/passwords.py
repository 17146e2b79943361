"""Password schemes of Dovecot's ``{SCHEME}secret`` notation: verify, generate, ``pop3ng passwd``.

Formats are Dovecot's own (checked against ``doveadm pw`` in the tests), so an existing Dovecot
passwd-file works unchanged. The crypto comes from maintained libraries: ``passlib`` (libpass) for
the crypt(3) family, ``bcrypt``, ``argon2-cffi``, and ``hashlib``/``hmac`` for the salted digests,
PBKDF2 and SCRAM keys. Verification can be slow by design: callers run it in a thread.
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
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

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


def _verify_plain(secret: str, password: bytes) -> bool:
    return hmac.compare_digest(secret.encode("utf-8", "surrogateescape"), password)


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


def _verify_salted(algorithm: str) -> Callable[[str, bytes], bool]:
    size = hashlib.new(algorithm).digest_size

    def verify(secret: str, password: bytes) -> bool:
        try:
            raw = base64.b64decode(secret, validate=True)
        except ValueError:
            return False
        digest, salt = raw[:size], raw[size:]
        return len(digest) == size and hmac.compare_digest(
            hashlib.new(algorithm, password + salt).digest(), digest)

    return verify


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


def _verify_cram(secret: str, password: bytes) -> bool:
    try:
        return hmac.compare_digest(cram.cram_context(password), secret.strip().lower())
    except ValueError:
        return False


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


VERIFIERS: Dict[str, Callable[[str, bytes], bool]] = {
    "PLAIN": _verify_plain,
    "CLEAR": _verify_plain,
    "CLEARTEXT": _verify_plain,
    "CRYPT": _verify_crypt,
    "MD5-CRYPT": _verify_crypt,
    "SHA256-CRYPT": _verify_crypt,
    "SHA512-CRYPT": _verify_crypt,
    "BLF-CRYPT": _verify_bcrypt,
    "ARGON2I": _verify_argon2,
    "ARGON2ID": _verify_argon2,
    "SSHA": _verify_salted("sha1"),
    "SSHA256": _verify_salted("sha256"),
    "SSHA512": _verify_salted("sha512"),
    "PBKDF2": _verify_pbkdf2,
    "CRAM-MD5": _verify_cram,
    "SCRAM-SHA-1": _verify_scram("sha1"),
    "SCRAM-SHA-256": _verify_scram("sha256"),
}


def verify(stored: str, password: bytes, default: str = DEFAULT_SCHEME) -> bool:
    scheme, secret = split_scheme(stored, default)
    verifier: Optional[Callable[[str, bytes], bool]] = VERIFIERS.get(scheme)
    if verifier is None:
        raise UnknownScheme(scheme)
    return verifier(secret, password)


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
        line = sys.stdin.buffer.readline()
        return line[:-1] if line.endswith(b"\n") else line
    first = getpass.getpass("Enter new password: ")
    if getpass.getpass("Retype new password: ") != first:
        raise ValueError("passwords do not match")
    return first.encode("utf-8")


def main(argv: List[str]) -> int:
    """``pop3ng passwd [-s SCHEME] [--stdin] [-t HASH]``: print a hash, like ``doveadm pw``."""
    parser = argparse.ArgumentParser(
        prog="pop3ng passwd",
        description="Print a password hash for a Dovecot-format passwd-file. The password is read from "
                    "a prompt, or from the first line of stdin when it is not a terminal (never argv).")
    parser.add_argument("-s", "--scheme", default=DEFAULT_GENERATE,
                        help="scheme (default %s): %s" % (DEFAULT_GENERATE, ", ".join(GENERATORS)))
    parser.add_argument("--stdin", action="store_true", help="read the password from stdin")
    parser.add_argument("-t", "--test", metavar="HASH",
                        help="verify the password against HASH instead; exit 0 if it matches")
    parser.add_argument("-l", "--list", action="store_true", help="list the supported schemes")
    args = parser.parse_args(argv)
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
            ok = verify(args.test, password)
        except UnknownScheme as error:
            print("pop3ng passwd: unknown scheme %s" % error, file=sys.stderr)
            return 2
        print("(verified)" if ok else "(verification failed)")
        return 0 if ok else 1
    print(generate(args.scheme, password))
    return 0
