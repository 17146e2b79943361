"""The standard library's :mod:`logging`, carried into Twisted's log.

psycopg's connection pool and the mbox store log with :mod:`logging`. Without a handler, Python's
last-resort handler wrote their warnings to standard error: past twistd's ``--logfile``, through
the middle of ``--logger``'s JSON lines, and nowhere at all once twistd daemonized. :func:`install`
gives the root logger a :class:`TwistedLogHandler`, so they become ``twisted.logger`` events in the
logger's namespace, like the server's own.

A record that repeats (the same logger, level and message template within
:data:`REPEAT_INTERVAL`) is counted, not written: the pool retries a dead database about every
second, and one line a minute says as much. The next one written carries ``suppressed``, the
count of those left out.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Tuple

from twisted.logger import Logger, LogLevel

#: Seconds within which a repeated record is counted instead of written.
REPEAT_INTERVAL = 60.0
#: Distinct records remembered for that (past it the memory starts again: no growth).
MAX_REMEMBERED = 1000

_LEVELS = ((logging.CRITICAL, LogLevel.critical), (logging.ERROR, LogLevel.error),
           (logging.WARNING, LogLevel.warn), (logging.INFO, LogLevel.info))


def twisted_level(levelno: int) -> LogLevel:
    for threshold, level in _LEVELS:
        if levelno >= threshold:
            return level
    return LogLevel.debug


class TwistedLogHandler(logging.Handler):
    def __init__(self, repeat_interval: float = REPEAT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        logging.Handler.__init__(self)
        self.repeat_interval = repeat_interval
        self.clock = clock
        #: (logger, level, template) -> [when last written, how many left out since]
        self._seen: Dict[Tuple[str, int, str], list] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            key = (record.name, record.levelno, str(record.msg))
            now = self.clock()
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.repeat_interval:
                seen[1] += 1
                return
            if len(self._seen) >= MAX_REMEMBERED:
                self._seen.clear()
            self._seen[key] = [now, 0]
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            fields = {"text": text}
            fmt = "{text}"
            if seen is not None and seen[1]:
                fields["suppressed"] = seen[1]
                fmt = "{text} (and {suppressed} more like it since the last one logged)"
            Logger(namespace=record.name).emit(twisted_level(record.levelno), fmt, **fields)
        except Exception:  # a logging handler never raises into the code that logged
            self.handleError(record)


def install() -> None:
    """Send the root logger's records (warnings and above, its default level) to Twisted's log;
    once per process."""
    root = logging.getLogger()
    if not any(isinstance(handler, TwistedLogHandler) for handler in root.handlers):
        root.addHandler(TwistedLogHandler())


__all__ = ["REPEAT_INTERVAL", "TwistedLogHandler", "install", "twisted_level"]
