"""``.. session-states::``: the POP3 session's states, the transitions between them and the commands
each state answers, drawn by graphviz from the server's own tables at build time:
``twisted_pop3ng.server.states.TRANSITIONS`` and the default ``CommandSet``
(``twisted_pop3ng.server.DEFAULT_COMMANDS``). Takes the options of ``graphviz``.
"""

from __future__ import annotations

import html
from typing import Any, Dict, List, Mapping, Tuple

from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.ext.graphviz import Graphviz
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: What a client does to cause each event of the transition table.
EVENT_LABELS = {"login": "USER/PASS, APOP or AUTH accepted", "quit": "QUIT"}


def verbs_by_state(handlers: Mapping[str, Any]) -> Dict[str, List[str]]:
    states: Dict[str, List[str]] = {}
    for verb, handler in handlers.items():
        for state in handler.states:
            states.setdefault(state, []).append(verb)
    return {state: sorted(verbs) for state, verbs in states.items()}


def dot_source(transitions: Mapping[Tuple[str, str], str], verbs: Mapping[str, List[str]],
               initial: str) -> str:
    states = [initial] + sorted({s for pair in transitions for s in (pair[0], transitions[pair])} - {initial})
    lines = [
        "digraph session {",
        '  graph [rankdir=LR, nodesep=0.4, fontname="sans-serif", bgcolor="transparent"];',
        '  node [fontname="sans-serif", fontsize=11];',
        '  edge [fontname="sans-serif", fontsize=10, color="#495057"];',
        '  connect [shape=point, width=0.12, xlabel="connect"];',
        '  closed [shape=doublecircle, label="", width=0.15];',
    ]
    for state in states:
        commands = verbs.get(state, [])
        rows = ['<tr><td><b>%s</b></td></tr>' % html.escape(state)]
        for start in range(0, len(commands), 4):
            rows.append('<tr><td><font face="monospace" point-size="9">%s</font></td></tr>'
                        % html.escape(" ".join(commands[start:start + 4])))
        if not commands:
            rows.append('<tr><td><i>no commands: deletions happen</i></td></tr>')
        lines.append('  "%s" [shape=plain, label=<<table border="1" cellborder="0" cellpadding="3" '
                     'style="rounded" bgcolor="#f1f3f5">%s</table>>];' % (state, "".join(rows)))
    lines.append('  connect -> "%s" [label="greeting"];' % initial)
    for (state, event), target in sorted(transitions.items()):
        lines.append('  "%s" -> "%s" [label="%s"];' % (state, target, EVENT_LABELS.get(event, event)))
    ends = [s for s in states if not any(pair[0] == s for pair in transitions)]
    for state in ends:
        lines.append('  "%s" -> closed [label="deletions committed"];' % state)
    for state in states:
        if state not in ends:  # the guarantee: only the end state deletes anything
            cause = "QUIT, timeout or" if state == initial else "timeout or"
            lines.append('  "%s" -> closed [style=dashed, color="#adb5bd", label="%s\\ndropped connection:'
                         '\\nnothing deleted"];' % (state, cause))
    lines.append("}")
    return "\n".join(lines) + "\n"


class SessionStates(Graphviz):
    has_content = False
    required_arguments = 0
    optional_arguments = 0

    def run(self) -> List[Any]:
        try:
            from twisted_pop3ng.server import AUTHORIZATION, DEFAULT_COMMANDS, TRANSITIONS
        except ImportError as error:
            logger.warning("session-states: %s", error, location=self.get_location())
            return []
        code = dot_source(TRANSITIONS, verbs_by_state(DEFAULT_COMMANDS.handlers), AUTHORIZATION)
        self.content = StringList(code.splitlines())
        return super().run()


def setup(app: Sphinx) -> Dict[str, Any]:
    app.setup_extension("sphinx.ext.graphviz")
    app.add_directive("session-states", SessionStates)
    return {"parallel_read_safe": True, "version": "1"}
