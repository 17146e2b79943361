"""Which verbs a server answers, in which states, and what CAPA says about them.

Rules of this module:

* a :class:`CommandSet` belongs to one factory (a server embedding its own verbs does not change
  another server in the same process); the verb modules fill module-level sets that a factory copies;
* a handler is ``handler(protocol, cmd)``: it answers at once (returns None) or returns a Deferred;
* what is allowed when, and what CAPA lists, is metadata next to each handler -- nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional

HandlerFunction = Callable[..., Any]

#: Command words already parsed once (b"RETR", b"retr", ...) and their handlers: the common case
#: skips the parser. Only words naming a registered command get in, and at most this many.
MAX_KNOWN_VERBS = 256


@dataclass(frozen=True)
class Handler:
    verb: str
    method: Callable[..., Any]
    states: FrozenSet[str]
    capability: Optional[Callable[[Any], Optional[str]]] = None


def _constant(text: str) -> Callable[[Any], str]:
    return lambda protocol: text


class CommandSet:
    """Handlers by verb, plus the cache of raw command words already looked up."""

    def __init__(self, handlers: Iterable[Handler] = ()) -> None:
        self.handlers: Dict[str, Handler] = {}
        #: raw word -> handler; emptied whenever a handler is added.
        self.known: Dict[bytes, Handler] = {}
        for handler in handlers:
            self.add(handler)

    def add(self, handler: Handler) -> None:
        self.handlers[handler.verb] = handler
        self.known.clear()

    def command(self, verb: str, *states: str,
                capability: Any = None) -> Callable[[HandlerFunction], HandlerFunction]:
        """Decorator: register ``handler(protocol, cmd)`` for ``verb`` in ``states``.

        ``capability`` is what CAPA lists for this verb: a string, or a callable
        ``(protocol) -> str|None`` (None: not offered now, e.g. STLS without a certificate).
        """
        if isinstance(capability, str):
            capability = _constant(capability)

        def register(method: HandlerFunction) -> HandlerFunction:
            self.add(Handler(verb, method, frozenset(states), capability))
            return method

        return register

    def get(self, verb: str) -> Optional[Handler]:
        return self.handlers.get(verb)

    def remember(self, word: bytes, handler: Handler) -> None:
        if len(self.known) < MAX_KNOWN_VERBS:
            self.known[word] = handler

    def capabilities(self, protocol: Any) -> List[str]:
        """CAPA lines of the handlers that offer one now, in registration order."""
        caps = [h.capability(protocol) for h in self.handlers.values() if h.capability is not None]
        return [c for c in caps if c]

    def copy(self) -> "CommandSet":
        return CommandSet(self.handlers.values())

    @classmethod
    def merged(cls, *sets: "CommandSet") -> "CommandSet":
        merged = cls()
        for commands in sets:
            for handler in commands.handlers.values():
                merged.add(handler)
        return merged


__all__ = ["CommandSet", "Handler", "MAX_KNOWN_VERBS"]
