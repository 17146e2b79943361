"""JSON lines for ``twistd``'s log: ``twistd --logger twisted_pop3ng.logs.json_observer pop3ng ...``.

twistd's ``--logger`` names a callable that returns the log observer (it takes precedence over
``--logfile``); :func:`json_observer` is one. It writes one JSON object per ``twisted.logger``
event and per line, to the standard output (what journald, a container runtime or ``-n`` with a
redirection collects), or appended to the file named by the ``POP3NG_LOG_FILE`` environment
variable (needed when twistd daemonizes, as its standard output then goes nowhere).

Rules of this module:

* every record has the same keys first, always present (:data:`KEYS`): ``time`` (ISO 8601, UTC,
  milliseconds), ``level`` (debug, info, warn, error, critical), ``namespace`` (the logger's),
  ``event`` (the name pop3ng's own events give themselves -- ``auth.failed``, ``auth.ok``,
  ``session.connect``, ``session.end``, ``metrics.listening`` -- else null) and ``text`` (the
  event formatted as the text log shows it); then ``traceback`` when the event carries a
  failure; then the event's structured fields, as they are;
* a field named like one of those keys is renamed with a trailing ``_``; Twisted's internal
  ``log_*`` keys and the legacy ``twisted.python.log`` duplicates (``message``, ``format``,
  ``isError``, ``failure``, ``time``) are left out;
* a value JSON cannot hold becomes one it can (bytes are decoded as UTF-8 with backslash escapes,
  other objects become their ``str``), and an event that cannot be written at all still gives a
  record saying so: the observer never raises (an observer that raises is removed by Twisted).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import IO, Any, Dict, Optional

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

#: The keys every record starts with.
KEYS = ("time", "level", "namespace", "event", "text")
#: Keys of the record that a field of the event cannot take (it gets a trailing "_").
RESERVED = frozenset(KEYS + ("traceback",))
#: Event keys that are never written: the legacy log system's copies of what the record has.
LEFT_OUT = frozenset({"message", "format", "isError", "failure", "time"})
#: The environment variable naming a file to append to instead of the standard output.
FILE_VARIABLE = "POP3NG_LOG_FILE"
#: Nesting kept in a field's value (deeper containers become their ``str``).
MAX_DEPTH = 4


def _iso_time(seconds: Optional[float]) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        seconds = time.time()
    whole = int(seconds // 1)
    millis = int((seconds - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + ".%03dZ" % millis


def _level(event: Dict[str, Any]) -> str:
    level = event.get("log_level")
    if isinstance(level, type(LogLevel.info)):
        return level.name
    return "error" if event.get("isError") else "info"


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as something ``json.dumps`` writes (see the module's rules)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if depth < MAX_DEPTH:
        if isinstance(value, (list, tuple, set, frozenset)):
            return [jsonable(item, depth + 1) for item in value]
        if isinstance(value, dict):
            return {str(key): jsonable(item, depth + 1) for key, item in value.items()}
    try:
        return str(value)
    except Exception:
        return "<unprintable %s>" % type(value).__name__


def record(event: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON object written for ``event`` (a dict, in key order)."""
    name = event.get("event")
    out: Dict[str, Any] = {
        "time": _iso_time(event.get("log_time")),
        "level": _level(event),
        "namespace": str(event.get("log_namespace") or event.get("system") or "-"),
        "event": name if isinstance(name, str) else None,
        "text": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["traceback"] = failure.getTraceback()
        except Exception:
            out["traceback"] = repr(failure)
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_") or key in LEFT_OUT:
            continue
        if key == "event" and isinstance(value, str):
            continue  # (it is the record's "event")
        out[key + "_" if key in RESERVED else key] = jsonable(value)
    return out


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes :func:`record` of each event as one line of JSON to a text stream, flushed."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: Dict[str, Any]) -> None:
        try:
            line = json.dumps(record(event), ensure_ascii=False, separators=(",", ":"))
        except Exception as error:  # (a record that cannot be made: say so, keep logging)
            line = json.dumps({"time": _iso_time(None), "level": "error", "namespace": __name__,
                               "event": "log.unwritable", "text": "cannot write a log event: %s"
                               % jsonable(error)})
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except Exception:
            pass


def json_file_observer(path: str) -> JSONLinesObserver:
    """A :class:`JSONLinesObserver` appending to the file ``path`` (line-buffered)."""
    return JSONLinesObserver(open(path, "a", encoding="utf-8", buffering=1))


def json_observer() -> JSONLinesObserver:
    """twistd's ``--logger`` factory: JSON lines on the standard output, or appended to the file
    named by ``POP3NG_LOG_FILE``. (The standard output is taken now, before twistd redirects
    ``sys.stdout`` into the log.)"""
    path = os.environ.get(FILE_VARIABLE)
    if path:
        return json_file_observer(path)
    return JSONLinesObserver(sys.stdout)


__all__ = ["json_observer", "json_file_observer", "JSONLinesObserver", "record", "jsonable", "KEYS"]
