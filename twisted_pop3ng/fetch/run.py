"""``pop3ng fetch``: move (or copy, with ``--keep``) mail from a POP3 server to a Maildir, mbox or MDA.

It never loses mail, and delivers each message once:

1. ``UIDL`` and ``LIST``; messages already recorded in the state file are not fetched again, nor
   are Maildir messages that reached new/ in a run killed before it could record them.
2. ``RETR`` pipelined (a window of commands in flight); each body streams into its destination.
   Every batch is made durable (fsync, rename, fsync of the directory) and only then recorded in
   the state file (rewritten atomically).
3. Only when every delivery is durable: ``DELE`` for the delivered messages (all of them, or with
   ``--keep`` those older than ``--keep-days``), then ``QUIT``. A drop or a kill before ``QUIT``
   deletes nothing; the next run skips what was delivered and deletes it then.

What the server says is checked before it is used (the client validates UIDLs, numbers and
sizes); messages that share a UIDL are left on the server and reported. A UIDL never names a file:
file names are digests (:mod:`.delivery`).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from twisted.internet import defer, threads

from twisted_pop3ng.client import protocol as pop3
from twisted_pop3ng.client.connect import parse_url
from twisted_pop3ng.client.errors import ProtocolError, UidlUnsupported
from twisted_pop3ng.fetch.config import non_negative_number, positive_number, whole_count
from twisted_pop3ng.fetch.delivery import open_destination
from twisted_pop3ng.fetch.forward import ForwardDestination, ForwardSettings
from twisted_pop3ng.fetch.state import FetchState, default_path

#: RETR commands in flight at once, and the most octets (by LIST size) in flight beyond the first.
WINDOW = 32
WINDOW_OCTETS = 8 << 20
#: Messages (or octets) per durable batch: one directory fsync and one state write per batch.
BATCH = 64
BATCH_OCTETS = 16 << 20
#: A batch is at least 1/STATE_GROWTH of the state file's entries (see _Retriever._got).
STATE_GROWTH = 16
#: Without ``--max-message-size``, a message may be at most OVERSIZE_FACTOR times its LIST size
#: plus OVERSIZE_SLACK octets (F16): RFC 1939 makes LIST the exact size, and the margin covers
#: servers that count LF line ends (a message of empty lines doubles as CRLF) and small
#: miscounts, while a server that announces 100 octets cannot fill the disk with gigabytes.
OVERSIZE_FACTOR = 2
OVERSIZE_SLACK = 1 << 20


#: Octets past twice a message's limit after which its body is taken to have no end (:class:`_Capped`).
OVERRUN_SLACK = 64 << 20


def message_limit(list_size: int, max_message_size: Optional[int]) -> int:
    """The most octets ``pop3ng fetch`` takes for a message LIST gives as ``list_size``."""
    if max_message_size is not None:
        return max_message_size
    return OVERSIZE_FACTOR * list_size + OVERSIZE_SLACK


@dataclass
class FetchOptions:
    url: str
    kind: str                      # maildir | mbox | mda
    target: str
    password: Optional[str]
    keep: bool = False
    keep_days: Optional[float] = None
    state_path: Optional[str] = None
    cafile: Optional[str] = None
    allow_plaintext: bool = False
    timeout: float = 120.0
    progress: bool = False
    batch: int = BATCH
    window: int = WINDOW
    #: An OAuth 2 bearer token (OAUTHBEARER / XOAUTH2) instead of a password.
    token: Optional[str] = None
    #: When SCRAM (or CRAM-MD5) is refused, try once more with PLAIN over TLS. Off by default
    #: (finding F18): it hands the password itself to any server with a valid certificate. Needed
    #: for servers that offer SCRAM but store only a crypt hash (Dovecot with SHA512-CRYPT users).
    allow_plain_fallback: bool = False
    #: Called with each warning (:attr:`FetchResult.warnings`) as soon as it arises, so that it
    #: reaches the user even when the run then fails.
    on_warning: Optional[Callable[[str], None]] = None
    #: Called with the name of each step where a crash must lose nothing: ``delivered`` (after a
    #: durable batch, before its state write), ``before-dele``, ``before-quit``, ``after-quit``.
    #: The crash tests pass one that kills the process; None in production.
    crash_hook: Optional[Callable[[str], None]] = None
    #: The largest message to take, in octets: larger ones (by LIST, or by what the server
    #: actually sends) are left on the server and reported. None: :func:`message_limit`'s
    #: default, twice the LIST size plus 1 MiB.
    max_message_size: Optional[int] = None
    #: For ``kind == "forward"``: where and how to forward (:mod:`.forward`).
    forward: Optional[Any] = None
    #: Force one SASL mechanism (e.g. ``SCRAM-SHA-256``) instead of the strongest offered.
    mechanism: Optional[str] = None
    #: Asked before each RETR is sent: once true, no more messages are fetched; those in flight
    #: land and are recorded, the delivered ones are deleted and the session ends with QUIT
    #: (the daemon's SIGTERM).
    should_stop: Optional[Callable[[], bool]] = None
    #: Told the work to do and each message as it is recorded (:mod:`.progress`); when None and
    #: :attr:`progress` is true, a bar of its own on stderr.
    progress_sink: Optional[Any] = None

    def __post_init__(self) -> None:
        # The library's own guard, by the rules the command line and the config file apply
        # first: a NaN keep_days compares false with every age, so every message was deleted.
        rules = (("keep_days", non_negative_number), ("timeout", positive_number),
                 ("batch", whole_count), ("window", whole_count))
        for name, rule in rules:
            value = getattr(self, name)
            if value is None and name == "keep_days":
                continue  # (keep them all)
            try:
                rule(value)
            except ValueError as error:
                raise ValueError("%s: %s, not %r" % (name, error, value)) from None


@dataclass
class FetchResult:
    listed: int = 0
    delivered: int = 0
    skipped: int = 0
    deleted: int = 0
    #: Messages the server refused to send (``-ERR`` to RETR), or that share their UIDL with
    #: another message: left on the server, reported.
    refused: List[str] = field(default_factory=list)
    #: Things the user should look at that did not stop the run (an mbox left as it was found).
    warnings: List[str] = field(default_factory=list)
    #: Octets delivered (as the destination stores them).
    octets: int = 0
    #: True when :attr:`FetchOptions.should_stop` ended the run before every message was fetched.
    stopped: bool = False
    #: The server's LOGIN-DELAY capability after login (RFC 2449 §6.8), in seconds, if any: the
    #: daemon polls no more often than that.
    login_delay: Optional[float] = None


def _no_crash(name: str) -> None:
    pass


class _Retriever:
    """Pipelines RETR over a list of messages, committing durable batches as they complete."""

    def __init__(self, client: pop3.POP3Client, destination: Any, state: FetchState,
                 todo: List[Tuple[int, str, int]], result: FetchResult, progress: Any,
                 batch: int = BATCH, window: int = WINDOW,
                 crash_hook: Callable[[str], None] = _no_crash,
                 max_message_size: Optional[int] = None,
                 should_stop: Optional[Callable[[], bool]] = None) -> None:
        self.client = client
        self.destination = destination
        self.state = state
        self.todo = todo
        self.result = result
        self.progress = progress
        self.done: defer.Deferred = defer.Deferred()
        self._next = 0
        self._in_flight: List[Any] = []
        self._in_flight_octets = 0
        self._batch: List[Tuple[Any, int]] = []
        self._batch_octets = 0
        self._error: Optional[Any] = None
        self._limit = min(batch, getattr(destination, "batch_limit", batch))
        self._adaptive = not hasattr(destination, "batch_limit")
        self._window = window
        self._crash_hook = crash_hook
        self._max_message_size = max_message_size
        self._should_stop = should_stop or (lambda: False)
        self._unsaved = 0
        self._save_every = batch
        self._blocking = getattr(destination, "blocking", False)
        self._committing = False

    def start(self) -> defer.Deferred:
        self._pump()
        return self.done

    def _pump(self) -> None:
        if self._next < len(self.todo) and self._should_stop():
            self.result.stopped = True
            self._next = len(self.todo)  # fetch no more; what is in flight lands and is recorded
        while (self._error is None and self._next < len(self.todo) and len(self._in_flight) < self._window
               and (not self._in_flight or self._in_flight_octets < WINDOW_OCTETS)
               and not (self._blocking and len(self._batch) >= self._window)):
            number, uid, size = self.todo[self._next]
            self._next += 1
            limit = message_limit(size, self._max_message_size)
            if size > limit:
                # (LIST already says it is too large: not even asked for)
                self.result.refused.append("%s: %d octets, more than --max-message-size %d"
                                           % (uid, size, limit))
                continue
            try:
                sink = self.destination.begin(uid)
            except Exception as e:
                self._error = e  # reported once what is in flight has landed
                break
            capped = _Capped(sink, limit)
            self._in_flight.append(capped)
            self._in_flight_octets += size
            self.client.retrieve(number, capped).addCallbacks(
                self._got, self._failed, callbackArgs=(capped, size), errbackArgs=(capped, size))
        if not self._in_flight and (self._error is not None or self._next >= len(self.todo)):
            self._finish()

    def _got(self, _: Any, capped: "_Capped", size: int) -> None:
        self._in_flight.remove(capped)
        self._in_flight_octets -= size
        sink = capped.sink
        if self._error is not None:
            sink.abort()
            return self._pump()
        if capped.oversized:
            sink.abort()
            self.result.refused.append(
                "%s: the server sent %d octets for a message it listed at %d, more than the "
                "limit of %d (--max-message-size)" % (sink.uid, capped.received, size, capped.limit))
            return self._pump()
        try:
            sink.finish()
        except Exception as e:
            sink.abort()
            self._error = e
            return self._pump()
        self._batch.append((sink, size))
        self._batch_octets += sink.size
        limit = self._limit
        if self._adaptive:
            # Each commit rewrites the whole state file: let batches grow with it (1/16 of its
            # entries), so that a run over 100,000 messages writes O(n) state, not O(n^2).
            limit = max(limit, len(self.state.delivered) // STATE_GROWTH)
        if len(self._batch) >= limit or self._batch_octets >= BATCH_OCTETS:
            self._commit()
        self._pump()

    def _failed(self, failure: Any, capped: "_Capped", size: int) -> None:
        self._in_flight.remove(capped)
        self._in_flight_octets -= size
        sink = capped.sink
        sink.abort()
        if failure.check(pop3.ServerError) and not failure.check(pop3.TemporaryError):
            # This one message cannot be had (vanished, unreadable): leave it on the server and go
            # on, so that one bad message does not hold back all the others run after run.
            self.result.refused.append("%s: %s" % (sink.uid, failure.value))
        elif self._error is None:
            self._error = failure.value
        self._pump()

    def _take(self, count: int) -> List[Tuple[Any, int]]:
        batch, self._batch = self._batch[:count], self._batch[count:]
        self._batch_octets = sum(sink.size for sink, _ in self._batch)
        return batch

    def _commit(self) -> None:
        if self._blocking:
            return self._kick()
        batch = self._take(len(self._batch))
        if not batch:
            return
        try:
            rejected = self.destination.commit([sink for sink, _ in batch]) or {}
        except Exception as e:
            return self._commit_failed(batch, e)
        self._record(batch, rejected)

    def _kick(self) -> None:
        """For destinations that block (an MTA, an MDA): one commit at a time, in order, in a
        thread, so that the reactor goes on receiving this run's messages (and other accounts'
        sessions go on) meanwhile. Each is recorded before the next is handed over."""
        if self._committing or not self._batch:
            return
        if self._error is not None:
            for sink, _ in self._take(len(self._batch)):
                sink.abort()
            return
        batch = self._take(self._limit)
        self._committing = True
        d = threads.deferToThread(self.destination.commit, [sink for sink, _ in batch])
        d.addCallbacks(lambda rejected: self._record(batch, rejected or {}),
                       lambda failure: self._commit_failed(batch, failure.value))
        d.addBoth(self._committed)

    def _committed(self, _: Any) -> None:
        self._committing = False
        self._kick()
        self._pump()

    def _commit_failed(self, batch: List[Tuple[Any, int]], error: BaseException) -> None:
        for sink, _ in batch:
            sink.abort()
        if self._error is None:
            self._error = error

    def _record(self, batch: List[Tuple[Any, int]], rejected: Dict[str, str]) -> None:
        """After the destination took ``batch``: record it (``delivered`` is the crash step)."""
        try:
            self._crash_hook("delivered")
            if rejected and not getattr(self.destination, "delete_rejected", False):
                # Refused for good by a forwarding MTA (5xx): left on the server and reported.
                for uid, reply in rejected.items():
                    self.result.refused.append("%s: %s" % (uid, reply))
                batch = [(sink, size) for sink, size in batch if sink.uid not in rejected]
            elif rejected:
                for uid, reply in rejected.items():
                    self.result.warnings.append("%s: %s; deleted on the server (on_reject = "
                                                '"delete")' % (uid, reply))
            delivered: Dict[str, Optional[int]] = {sink.uid: size for sink, size in batch}
            if getattr(self.destination, "journaled", False):
                # Handed to another program one by one: journal each at once, rewrite the state
                # file only every batch (state module doc).
                self.state.journal(delivered)
                self._unsaved += len(delivered)
                if self._unsaved >= self._save_every:
                    self.state.save()
                    self._unsaved = 0
            else:
                self.state.mark_delivered(delivered)
                if self.state.pending is not None:
                    self.state.pending = None
                self.state.save()
        except Exception as e:
            return self._commit_failed(batch, e)
        octets = sum(sink.size for sink, _ in batch)
        self.result.delivered += len(batch)
        self.result.octets += octets
        if self.progress:
            self.progress.advance(len(batch), octets)

    def _finish(self) -> None:
        if self.done.called:
            return
        self._commit()
        if self._committing:
            return  # :meth:`_committed` comes back here once the destination is done
        if self._error is not None:
            self.done.errback(self._error)
        else:
            self.done.callback(None)


class _Capped:
    """Hands a message to its sink up to ``limit`` octets (F16). Past that it drops the rest
    rather than cutting the connection: the session must read the message to its terminating
    dot to stay in step, and the other messages of the run still flow; the message is then
    aborted and reported (:meth:`_Retriever._got`), so no more than ``limit`` octets of it ever
    reach the disk. A message that goes on past :meth:`overrun_limit` -- a body without an end --
    ends the session instead (nothing is deleted without QUIT; what was delivered is recorded)."""

    def __init__(self, sink: Any, limit: int) -> None:
        self.sink = sink
        self.limit = limit
        self.received = 0
        self.oversized = False

    def overrun_limit(self) -> int:
        return 2 * self.limit + OVERRUN_SLACK

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.oversized or self.received > self.limit:
            self.oversized = True
            if self.received > self.overrun_limit():
                raise ProtocolError("the server sent more than %d octets for %s and went on: "
                                    "giving up" % (self.overrun_limit(), self.sink.uid))
            return
        self.sink.write(data)


async def fetch(reactor: Any, options: FetchOptions) -> FetchResult:
    """One fetch run; raises on failure after making every completed delivery durable."""
    url = parse_url(options.url)
    if not url.username:
        raise ValueError("the URL needs a user name: pop3://USER@HOST")
    account = str(url)
    state_path = options.state_path or default_path(account)
    lock = _lock_account(state_path)
    try:
        return await _fetch(reactor, options, account, state_path)
    finally:
        os.close(lock)


def _lock_account(state_path: str) -> int:
    """One run per account at a time: two runs would fetch, and write, the same messages."""
    os.makedirs(os.path.dirname(state_path) or ".", mode=0o700, exist_ok=True)
    fd = os.open(state_path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FetchBusy("another pop3ng fetch is running for this account (%s.lock)" % state_path)
    return fd


class FetchBusy(Exception):
    """Another run holds the account's lock."""


async def _fetch(reactor: Any, options: FetchOptions, account: str, state_path: str) -> FetchResult:
    from twisted_pop3ng.client.connect import connect

    crash_hook = options.crash_hook or _no_crash
    state = FetchState.load(state_path, account)
    if options.kind == "forward":
        destination: Any = ForwardDestination(options.forward or ForwardSettings(options.target),
                                              account)
        destination.crash_hook = crash_hook
    else:
        destination = open_destination(options.kind, options.target, account)
    destination.recover(state)
    result = FetchResult()
    for warning in getattr(destination, "warnings", ()):
        result.warnings.append(warning)
        if options.on_warning is not None:
            options.on_warning(warning)
    client = await connect(reactor, options.url, password=options.password, token=options.token,
                           cafile=options.cafile,
                           allow_plaintext=options.allow_plaintext, timeout=options.timeout,
                           allow_plain_fallback=options.allow_plain_fallback,
                           mechanism=options.mechanism)
    result.login_delay = _login_delay(client.capabilities)
    try:
        try:
            uids, sizes = await defer.gatherResults([client.uidl(), client.list()],
                                                    consumeErrors=True)
        except defer.FirstError as e:
            if e.subFailure.check(pop3.ServerError) and "UIDL" not in client.capabilities:
                raise UidlUnsupported("the server does not support UIDL, which pop3ng fetch "
                                      "needs to deliver each message exactly once")
            raise
        result.listed = len(uids)
        for number in sorted(set(sizes) - set(uids)):
            # (RFC 1939 gives every message a UIDL; without one it cannot be told apart from
            # the next run's, so it is neither fetched nor deleted -- and said, not skipped quietly)
            result.refused.append("message %d: the server lists it but gives it no UIDL; it is "
                                  "left on the server" % number)
        ambiguous = _ambiguous(uids, result)
        todo: List[Tuple[int, str, int]] = []
        recovered: Dict[str, Optional[int]] = {}
        for number in sorted(uids):
            uid, size = uids[number], sizes.get(number)
            if uid in ambiguous:
                continue
            if state.is_delivered(uid, size):
                result.skipped += 1
            elif destination.has(uid, size):
                recovered[uid] = size
                result.skipped += 1
            else:
                todo.append((number, uid, size or 0))
        if recovered:
            state.mark_delivered(recovered)
        # (saves what was recovered too, in the same write; sizes as LIST gave them, None kept)
        destination.intend(state, [(uid, sizes.get(number)) for number, uid, _ in todo])
        state.save()
        progress = options.progress_sink
        if progress is None and options.progress and todo:
            from twisted_pop3ng.fetch.progress import ProgressBar

            progress = _OwnBar(ProgressBar(sys.stderr))
        if progress is not None:
            progress.start(len(todo), sum(size for _, _, size in todo))
        try:
            await _Retriever(client, destination, state, todo, result, progress,
                             options.batch, options.window, crash_hook,
                             options.max_message_size, options.should_stop).start()
        finally:
            if progress is not None:
                progress.close()
        doomed = _to_delete(uids, sizes, state, options, ambiguous)
        crash_hook("before-dele")
        if doomed:
            replies = [client.delete(n) for n in doomed]
            await defer.gatherResults(replies, consumeErrors=True)
        crash_hook("before-quit")
        await client.quit()
        crash_hook("after-quit")
    except BaseException:
        if client.transport is not None:
            client.transport.abortConnection()
        raise
    finally:
        destination.close()
        state.close()
    result.deleted = len(doomed)
    state.forget(uids[n] for n in doomed)
    state.forget_except(uids.values())
    # The run's messages are recorded or were not delivered: its intent must not outlive it (a
    # later message reusing a UIDL would be taken for this run's file).
    state.clear_intent()
    state.save()
    return result


def _login_delay(capabilities: Dict[str, List[str]]) -> Optional[float]:
    words = capabilities.get("LOGIN-DELAY") or []
    if words and words[0].isdigit() and len(words[0]) < 9:
        return float(words[0])
    return None


def _ambiguous(uids: Dict[int, str], result: FetchResult) -> Set[str]:
    """UIDLs the server lists for more than one message (an RFC 1939 violation of buggy servers).

    Such messages are neither fetched nor deleted, and reported (finding F12): the UIDL is what
    names a message's file and its state entry, so two messages under one UIDL would write the
    same file, and the second run would take both for delivered and delete both. Refusing the
    whole listing would hold back every other message; leaving only these on the server loses
    nothing and lets the rest flow.
    """
    numbers: Dict[str, List[int]] = {}
    for number in sorted(uids):
        numbers.setdefault(uids[number], []).append(number)
    ambiguous = {uid for uid, listed in numbers.items() if len(listed) > 1}
    for uid in sorted(ambiguous):
        result.refused.append("%s: the server gives this UIDL to messages %s; they are left on "
                              "the server" % (uid, ", ".join(str(n) for n in numbers[uid])))
    return ambiguous


def _to_delete(uids: Dict[int, str], sizes: Dict[int, int], state: FetchState,
               options: FetchOptions, ambiguous: Set[str]) -> List[int]:
    now = time.time()
    doomed = []
    for number in sorted(uids):
        uid = uids[number]
        if uid in ambiguous:
            continue  # which of them was delivered cannot be told: delete none
        if not state.is_delivered(uid, sizes.get(number)):
            continue
        if options.keep:
            if options.keep_days is None or now - state.delivered_at(uid) < options.keep_days * 86400:
                continue
        doomed.append(number)
    return doomed


class _OwnBar:
    """A bar for a single run (the command line without --config): cleared at the end."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.account = bar.account()

    def start(self, messages: int, octets: int) -> None:
        self.account.start(messages, octets)

    def advance(self, messages: int, octets: int) -> None:
        self.account.advance(messages, octets)

    def close(self) -> None:
        self.bar.clear()
