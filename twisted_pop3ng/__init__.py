"""twisted-pop3ng: a POP3 server and client framework for Twisted.

The package, by layer (an import-linter contract in ``setup.cfg`` holds the arrows):

* :mod:`.wire` -- the sans-I/O codec (no Twisted); :mod:`.errors`, :mod:`.interfaces`,
  :mod:`.model` -- exceptions, the storage contract and its value types;
* :mod:`.auth`, :mod:`.mailbox`, :mod:`.tls` -- checkers and SASL, mailbox stores, certificates;
* :mod:`.server`, :mod:`.client` -- the two protocols;
* :mod:`.service` (``twistd pop3ng``), :mod:`.fetch` (``pop3ng fetch``), :mod:`.cli`;
* :mod:`.fastpath` -- the only code that uses private Twisted/CPython names; only :mod:`.service`
  wires it in.

The names below are importable from here; they load on first use, so ``import twisted_pop3ng``
(which the twistd plugin does) stays cheap.
"""

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "POP3ServerFactory": "twisted_pop3ng.server.protocol",
    "POP3ServerProtocol": "twisted_pop3ng.server.protocol",
    "ServerConfig": "twisted_pop3ng.server.protocol",
    "MailboxRealm": "twisted_pop3ng.server.realm",
    "MaildirStore": "twisted_pop3ng.mailbox.maildir.store",
    "MemoryStore": "twisted_pop3ng.mailbox.memory",
    "POP3Client": "twisted_pop3ng.client.protocol",
    "connect": "twisted_pop3ng.client.connect",
    "IMailbox": "twisted_pop3ng.interfaces",
    "IMailboxStore": "twisted_pop3ng.interfaces",
    "MessageInfo": "twisted_pop3ng.interfaces",
    "POP3Error": "twisted_pop3ng.errors",
}

__all__ = ["__version__"] + list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError("module 'twisted_pop3ng' has no attribute %r" % (name,))
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
