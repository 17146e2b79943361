"""Our own TLS session-ticket keys in OpenSSL, through a name pyOpenSSL does not expose.

pyOpenSSL/cryptography have no API for ``SSL_CTX_set_tlsext_ticket_key_evp_cb``: without it every
``SSL_CTX`` seals tickets with its own random key, so a ticket opens only in the process (and the
certificate load) that issued it. Here the callback is reached in the OpenSSL that cryptography
links statically: the functions' addresses are read from the symbol table of its extension
module (``_rust.abi3.so``) and checked against addresses cffi does expose.

Rules of this module:

* probed once, at import (:data:`AVAILABLE`, :data:`REASON`): the ELF symbol table must hold
  every function used, and three functions cffi exposes must sit exactly where that table says
  (so the table describes the very library loaded); ``POP3NG_STOCK_TWISTED=1`` turns it off;
* the fallback, when the probe fails: :func:`install` returns False and OpenSSL's own
  per-context random keys stay (resumption within one process, until the next certificate reload);
* the callback never raises into OpenSSL: an unexpected error refuses the ticket (full handshake).
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Any, Dict, Mapping, Optional, Tuple

from OpenSSL import SSL

from twisted_pop3ng.fastpath import _compat

__all__ = ["AVAILABLE", "REASON", "install", "probe", "TicketWithFirstWrite"]

#: Functions whose addresses come from the symbol table.
_NEEDED = ("SSL_CTX_set_tlsext_ticket_key_evp_cb", "SSL_CTX_set_num_tickets", "SSL_new_session_ticket",
           "EVP_EncryptInit_ex2",
           "EVP_DecryptInit_ex2", "EVP_aes_256_cbc", "EVP_MAC_CTX_set_params")
#: Functions cffi exposes: the address cffi gives for each is its ``_cffi_d_`` wrapper's, which
#: must sit where the symbol table says.
_ANCHORS = ("SSL_CTX_set_options", "SSL_CTX_set_session_id_context", "SSL_get1_session")
_WRAPPER = "_cffi_d_"
_SHT_SYMTAB, _STT_FUNC = 2, 2
#: OSSL_PARAM data types and "not modified" (openssl/core.h).
_OSSL_PARAM_UTF8_STRING, _OSSL_PARAM_OCTET_STRING = 4, 5
_OSSL_PARAM_UNMODIFIED = ctypes.c_size_t(-1).value


def _elf_functions(path: str, names: Tuple[str, ...]) -> Dict[str, int]:
    """The symbol-table values (offsets from the load address) of the functions ``names`` in the
    little-endian ELF64 file ``path``; those absent (a stripped file) are left out."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4:6] != b"\x02\x01":
        return {}
    try:
        return _symbols(data, names)
    except (struct.error, ValueError):  # a truncated or odd file: no symbols
        return {}


def _symbols(data: bytes, names: Tuple[str, ...]) -> Dict[str, int]:
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    wanted = {name.encode(): name for name in names}
    found: Dict[str, int] = {}
    for index in range(shnum):
        header = struct.unpack_from("<IIQQQQIIQQ", data, shoff + index * shentsize)
        if header[1] != _SHT_SYMTAB:
            continue
        offset, size, link, entsize = header[4], header[5], header[6], header[9]
        strings = struct.unpack_from("<IIQQQQIIQQ", data, shoff + link * shentsize)[4]
        for name_at, info, _other, shndx, value, _size in struct.iter_unpack(
                "<IBBHQQ", data[offset:offset + size - size % entsize]):
            if info & 0xF != _STT_FUNC or not shndx or not value:
                continue
            start = strings + name_at
            name = data[start:data.index(b"\0", start)]
            if name in wanted:
                found[wanted[name]] = value
    return found


class _OSSLParam(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("data_type", ctypes.c_uint), ("data", ctypes.c_void_p),
                ("data_size", ctypes.c_size_t), ("return_size", ctypes.c_size_t)]


#: int cb(SSL *, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *, EVP_MAC_CTX *, int enc)
_TICKET_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


class _Native:
    """The OpenSSL functions used, as ctypes callables at their verified addresses."""

    def __init__(self, addresses: Dict[str, int]) -> None:
        p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        self.set_ticket_cb = ctypes.CFUNCTYPE(i, p, _TICKET_CALLBACK)(addresses["SSL_CTX_set_tlsext_ticket_key_evp_cb"])
        self.set_num_tickets = ctypes.CFUNCTYPE(i, p, s)(addresses["SSL_CTX_set_num_tickets"])
        self.new_session_ticket = ctypes.CFUNCTYPE(i, p)(addresses["SSL_new_session_ticket"])
        self.encrypt_init = ctypes.CFUNCTYPE(i, p, p, p, p, p)(addresses["EVP_EncryptInit_ex2"])
        self.decrypt_init = ctypes.CFUNCTYPE(i, p, p, p, p, p)(addresses["EVP_DecryptInit_ex2"])
        self.aes_256_cbc = ctypes.CFUNCTYPE(p)(addresses["EVP_aes_256_cbc"])()
        self.mac_set_params = ctypes.CFUNCTYPE(i, p, p)(addresses["EVP_MAC_CTX_set_params"])


def probe(environ: Mapping[str, str] = os.environ) -> Tuple[Optional[_Native], str]:
    """The OpenSSL functions (None if out of reach) and why; the module probes once, at import."""
    if environ.get(_compat.STOCK_ENV, "") not in ("", "0"):
        return None, "%s is set" % _compat.STOCK_ENV
    try:
        from cryptography.hazmat.bindings import _rust
        from OpenSSL._util import ffi, lib

        wrappers = tuple(_WRAPPER + name for name in _ANCHORS)
        offsets = _elf_functions(_rust.__file__, _NEEDED + wrappers)
        missing = [name for name in _NEEDED + wrappers if name not in offsets]
        if missing:
            return None, "no symbol table entry for %s in %s" % (", ".join(missing), _rust.__file__)
        bases = {int(ffi.cast("uintptr_t", getattr(lib, name))) - offsets[_WRAPPER + name]
                 for name in _ANCHORS}
        if len(bases) != 1:
            return None, "the symbol table of %s does not match the loaded library" % _rust.__file__
        base = bases.pop()
        return _Native({name: base + offsets[name] for name in _NEEDED}), "OpenSSL ticket key callback"
    except Exception as error:  # any surprise in a private route means: not available
        return None, "probe failed: %r" % (error,)


_NATIVE, REASON = probe()
#: Whether :func:`install` can give OpenSSL our ticket keys (else: OpenSSL's per-context keys).
AVAILABLE = _NATIVE is not None


class _KeyParams:
    """The ``OSSL_PARAM`` list that sets one HMAC-SHA256 key (kept alive with its buffers)."""

    def __init__(self, hmac_key: bytes) -> None:
        self.key = ctypes.create_string_buffer(hmac_key, len(hmac_key))
        self.digest = ctypes.create_string_buffer(b"SHA256")
        self.params = (_OSSLParam * 3)(
            _OSSLParam(b"key", _OSSL_PARAM_OCTET_STRING, ctypes.cast(self.key, ctypes.c_void_p),
                       len(hmac_key), _OSSL_PARAM_UNMODIFIED),
            _OSSLParam(b"digest", _OSSL_PARAM_UTF8_STRING, ctypes.cast(self.digest, ctypes.c_void_p),
                       6, _OSSL_PARAM_UNMODIFIED),
            _OSSLParam(None, 0, None, 0, 0))


def _callback(native: _Native, keys: Any) -> Any:
    params: Dict[bytes, _KeyParams] = {}

    def key_params(hmac_key: bytes) -> _KeyParams:
        found = params.get(hmac_key)
        if found is None:
            if len(params) > 16:
                params.clear()
            found = params[hmac_key] = _KeyParams(hmac_key)
        return found

    def ticket_key(ssl: Any, key_name: int, iv: int, cipher_ctx: int, mac_ctx: int, enc: int) -> int:
        try:
            if enc:
                key = keys.current()
                ctypes.memmove(key_name, key.name, len(key.name))
                ctypes.memmove(iv, os.urandom(16), 16)
                if native.encrypt_init(cipher_ctx, native.aes_256_cbc, key.aes_key, iv, None) != 1:
                    return -1
                return 1 if native.mac_set_params(mac_ctx, key_params(key.hmac_key).params) == 1 else -1
            found = keys.lookup(ctypes.string_at(key_name, 16))
            if found is None:
                return 0  # unknown or expired: a full handshake
            key, current = found
            if native.mac_set_params(mac_ctx, key_params(key.hmac_key).params) != 1:
                return -1
            if native.decrypt_init(cipher_ctx, native.aes_256_cbc, key.aes_key, iv, None) != 1:
                return -1
            return 1 if current else 2  # 2: accepted, and a ticket under the current key follows
        except Exception:
            return -1

    return _TICKET_CALLBACK(ticket_key)


def install(context: Any, keys: Any, native: Optional[_Native] = None) -> bool:
    """Make the pyOpenSSL ``context`` seal and open tickets with ``keys``
    (:class:`twisted_pop3ng.tls.tickets.TicketKeys`); False (and nothing changed) when the probe
    failed. ``native``: another :func:`probe`'s result (tests).

    TLS 1.3 tickets are then sent by :class:`TicketWithFirstWrite` connections, one per
    connection, in the same packet as the server's first reply (OpenSSL's own would be a packet
    of their own, right after the handshake: one more ``send`` per session)."""
    native = native if native is not None else _NATIVE
    if native is None:
        return False
    from OpenSSL._util import ffi

    pointer = int(ffi.cast("uintptr_t", context._context))
    callback = _callback(native, keys)
    if native.set_ticket_cb(pointer, callback) != 1:
        return False
    native.set_num_tickets(pointer, 0)
    context._pop3ng_native = native
    # OpenSSL keeps a bare pointer: the callback lives as long as the context object.
    context._pop3ng_ticket_callback = callback
    return True


class TicketWithFirstWrite(SSL.Connection):
    """A server connection that asks for its TLS 1.3 ticket with its first write after the
    handshake, so that both leave in one packet.

    On TLS 1.2 (whose ticket is part of the handshake) or with a context :func:`install` did not
    set up, it is a plain :class:`OpenSSL.SSL.Connection`."""

    _ticket_due = True

    def send(self, buf: Any, flags: int = 0) -> int:
        # (Twisted tries a first write during the handshake: the client's Finished says it is over.)
        if self._ticket_due and self.get_peer_finished() is not None:
            self._ticket_due = False
            native = getattr(self._context, "_pop3ng_native", None)
            if native is not None:
                from OpenSSL._util import ffi

                # 0 (nothing queued) outside TLS 1.3: then there is no ticket to add.
                native.new_session_ticket(int(ffi.cast("uintptr_t", self._ssl)))
        return super().send(buf, flags)
