"""The extension points of twisted-pop3ng, as ``zope.interface`` interfaces.

Every method that may block is allowed to return a Deferred; callers wrap the call in
``maybeDeferred``. Users extend the server by implementing one of these and handing it to a factory
or to ``twistd pop3ng``, never by subclassing the protocol.
"""

from __future__ import annotations


from zope.interface import Attribute, Interface

from twisted_pop3ng.model import MessageInfo, MessageTable  # noqa: F401  (re-exported)


class IMailbox(Interface):
    """A locked maildrop: the avatar a POP3 session works on.

    The mailbox is opened (and locked) by an :class:`IMailboxStore`, used by one session, and closed
    (unlocked) by the realm's logout. Indexes are 0-based positions in the login snapshot.
    """

    def list_messages():
        """The snapshot taken at login: a sequence of :class:`MessageInfo` (or a Deferred of one).

        Called once per session; mail delivered afterwards must not appear in this session.
        """

    def open_message(index):
        """A binary file-like object (``read(n)``, ``close()``) with the stored message, or a Deferred.

        Raise :class:`~twisted_pop3ng.errors.MessageVanished` (or ``OSError``) when it is gone.

        A mailbox may also offer the optional, synchronous ``read_whole(index, limit)``: the stored
        message as bytes when it is shorter than ``limit`` octets, else None. The server then sends
        small messages in one write and streams only the large ones (both built-in backends do).
        Likewise ``uidl_listing()``: the bytes of a full ``UIDL`` body (``N UID\\r\\n`` for every
        message of the snapshot), which a backend may keep between sessions (the maildir does).
        """

    def commit(deleted):
        """UPDATE state: remove the messages at these indexes, durably. May return a Deferred.

        Not called when the session ends without QUIT.
        """

    def close():
        """Release the lock and any resources. Idempotent."""


class IMailboxStore(Interface):
    """Where maildrops live: opens and locks the maildrop of an authenticated user."""

    def open_mailbox(username):
        """Return an :class:`IMailbox` (or a Deferred) with the maildrop locked for this session.

        Raise :class:`~twisted_pop3ng.errors.MailboxInUse` at once when another session holds the lock.
        """


class IMaildropLock(Interface):
    """An exclusive lock on one maildrop, held for a session."""

    path = Attribute("What is locked (for messages).")

    def acquire():
        """Take the lock or raise MailboxInUse at once (never wait)."""

    def release():
        """Release the lock. Idempotent."""
