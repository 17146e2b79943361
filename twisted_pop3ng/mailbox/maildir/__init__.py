"""The maildir store: flock lock per maildrop, a size index, UIDL = the file's base name.

Rules of this package: :mod:`.names` (base names, UIDLs) is a leaf; :mod:`.listing` reads the
directories, :mod:`.measure` measures wire sizes (in a helper process for big cold scans),
:mod:`.index` keeps the snapshot cache and index file, :mod:`.store` is the ``IMailboxStore`` /
``IMailbox`` pair on top of them. Nothing here touches sockets. Today's names stay importable here.
"""

from twisted_pop3ng._fs import fsync_directory, write_atomically
from twisted_pop3ng.mailbox.maildir.names import base_name, uid_for
from twisted_pop3ng.mailbox.maildir.store import (LOCK_NAME, READ_SIZE, MaildirLock,
                                                  MaildirMailbox, MaildirStore, deliver)

__all__ = ["MaildirStore", "MaildirMailbox", "MaildirLock", "deliver", "LOCK_NAME", "READ_SIZE",
           "base_name", "uid_for", "fsync_directory", "write_atomically"]
