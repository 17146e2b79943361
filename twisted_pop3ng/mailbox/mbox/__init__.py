"""Unix mbox maildrops (``--mailbox mbox:/var/mail/{user}``): see :mod:`.store` and docs/mbox.rst.

The modules: :mod:`.format` (separators, quoting, the scan), :mod:`.locking` (session lock,
dotlock + fcntl), :mod:`.uids` (UIDLs and their index), :mod:`.rewrite` (UPDATE in place behind
a journal), :mod:`.store` (the store, the mailbox, delivery).
"""
