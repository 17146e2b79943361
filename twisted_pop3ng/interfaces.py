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

        A mailbox may also provide :class:`IWholeMessageReader` (small messages in one read) and
        :class:`IUIDLListing` (a kept ``UIDL`` body); the server asks ``providedBy`` once per login.
        """

    def commit(deleted):
        """UPDATE state: remove the messages at these indexes, durably. May return a Deferred.

        Not called when the session ends without QUIT.
        """

    def close():
        """Release the lock and any resources. Idempotent."""


class IWholeMessageReader(Interface):
    """Optional for an :class:`IMailbox`: small messages as bytes, read in one piece.

    The server then sends a small message in one write and streams only the large ones through
    ``open_message`` (both built-in backends provide it).
    """

    def read_whole(index, limit):
        """The stored message at ``index`` as bytes when it is shorter than ``limit`` octets and at
        hand (a file read, a prefetched copy), else None: the server then calls ``open_message``.
        Synchronous: never a Deferred, never a wait.

        Raise :class:`~twisted_pop3ng.errors.MessageVanished` (or ``OSError``) when it is gone.
        """


class IUIDLListing(Interface):
    """Optional for an :class:`IMailbox`: the whole ``UIDL`` body of the login snapshot."""

    def uidl_listing():
        """The bytes of a full ``UIDL`` body, ``b"1 UID\\r\\n2 UID\\r\\n..."`` for every message of
        the snapshot. Synchronous. Used while no message is marked deleted; a backend may keep it
        between sessions (the maildir keeps it with its cached snapshot)."""


#: :meth:`IInlineChecker.avatar_id_now`'s answer "cannot answer at once, ask ``requestAvatarId``".
LATER = object()


class IInlineChecker(Interface):
    """Optional for a ``twisted.cred`` checker: answers cheap checks without a Deferred.

    The server's login (:func:`twisted_pop3ng.auth.checkers.login_now`) then asks the realm
    directly, and a session whose password is checked at once needs no Deferred chain.
    """

    def avatar_id_now(credentials):
        """The avatar id for ``credentials``, or raise ``UnauthorizedLogin``; or :data:`LATER`
        when the check cannot be done at once (a slow hash, other credentials): the caller then
        uses ``requestAvatarId``."""


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


class IMailboxStoreFactory(Interface):
    """A ``--mailbox SCHEME:ARGS`` backend for ``twistd pop3ng``, found as a Twisted plugin.

    The ``--mailbox`` counterpart of strcred's ``ICheckerFactory``: a third-party backend is one
    drop-in file in a ``twisted/plugins/`` directory whose module-level object provides this and
    ``twisted.plugin.IPlugin``. Keep that file import-light (every ``twistd`` run may load it):
    import the store's module inside :meth:`makeStore`.
    """

    scheme = Attribute("The name before the first colon of --mailbox, e.g. 'maildir'.")
    help = Attribute("One paragraph for --help-mailbox: what ARGS means, with an example.")

    def makeStore(argstring):
        """An :class:`IMailboxStore` from the text after ``SCHEME:``; raise ``ValueError`` (its
        text is shown on the command line) when ``argstring`` is unusable."""


class IMailboxDelivery(Interface):
    """Optional for an :class:`IMailboxStore`: mail can be delivered into it (LMTP, ``pop3ng deliver``).

    Every built-in store provides it. Delivery never needs the maildrop lock: a message delivered
    while a session holds the maildrop appears in the next session's snapshot, not in this one.
    """

    def deliver(username, source):
        """Store one message for ``username`` and return its UIDL once it is durable.

        ``source`` is a binary file positioned at the message's first octet, read to its end with
        ``read(n)``: the message as stored (lines end in LF or CRLF, no dot-stuffing). A store must
        stream it (a 50 MB message is never held whole). Blocking and thread-safe: the LMTP
        listener calls it in a thread of its own pool, ``pop3ng deliver`` directly.

        Raise :class:`~twisted_pop3ng.errors.TemporaryFailure` (or ``OSError`` such as ``ENOSPC``)
        for a failure worth retrying and :class:`~twisted_pop3ng.errors.PermanentFailure` for one
        that is not; nothing of the message may remain visible after either.
        """
