"""``.. bench-results:: _static/bench/results.json``: the table of a benchmark run, read at build time
from the file ``python3 -m benchmarks.run --json`` wrote (the same file the charts in
``_static/bench/`` were drawn from by ``--plot``), with the run's date, commit, machine and command.

Columns: each peer's value, then how many times better ours is than Dovecot and twisted.mail
(>1: ours is better, whichever way the unit points). A run of several rounds (``--runs N``) records
each ratio as taken within each round (``ratios[key][peer]``: median, min, max) and each value's
``spread`` ([min, max] by peer): cells then read "median (min–max)". Older records have neither:
their ratios are taken from the medians.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Dict, List, Optional

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

PEERS = ("ours", "twisted.mail", "dovecot")


def number(value: Optional[float]) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return "{:,.0f}".format(value)
    if value >= 10:
        return "%.1f" % value
    return "%.3g" % value


def with_spread(text: str, low: Optional[float], high: Optional[float], fmt: Callable[[float], str]) -> str:
    """``text (low–high)`` when the rounds differed; ``text`` alone for one round or no spread."""
    if low is None or high is None or fmt(low) == fmt(high):
        return text
    return "%s (%s–%s)" % (text, fmt(low), fmt(high))


def times(value: float) -> str:
    return "%.1fx" % value


def ratio(ours: Optional[float], other: Optional[float], higher_is_better: bool) -> str:
    """Ours against another peer from the two medians (records written before ``ratios`` existed)."""
    if not ours or not other:
        return "–"
    return times(ours / other if higher_is_better else other / ours)


def ratio_cell(record: Dict[str, Any], row: Dict[str, Any], peer: str, values: List[Optional[float]]) -> str:
    """The median of the ratios taken within each round, with their spread, when the record has
    them: the ratio of two medians can differ from it when a peer's good and bad rounds fall apart."""
    within = record.get("ratios", {}).get(row["key"], {}).get(peer)
    if within and within.get("median") is not None:
        return with_spread(times(within["median"]), within.get("min"), within.get("max"), times)
    return ratio(values[0], values[PEERS.index(peer)], row["higher_is_better"])


def value_cell(record: Dict[str, Any], key: str, peer: str, value: Optional[float]) -> str:
    low_high = record.get("spread", {}).get(peer, {}).get(key)
    if value is None or not low_high:
        return number(value)
    return with_spread(number(value), low_high[0], low_high[1], number)


def table_rows(record: Dict[str, Any]) -> List[List[str]]:
    results = record["results"]
    rows = []
    for row in record["rows"]:
        values = [results.get(peer, {}).get(row["key"]) for peer in PEERS]
        if all(v is None for v in values):
            continue
        rows.append([row["label"], row["unit"]]
                    + [value_cell(record, row["key"], peer, v) for peer, v in zip(PEERS, values)]
                    + [ratio_cell(record, row, "dovecot", values), ratio_cell(record, row, "twisted.mail", values)])
    return rows


def goals_sentence(record: Dict[str, Any]) -> str:
    """How many of the run's goals were met, naming those that were not (as ``benchmarks.run``
    judged them when it wrote the file)."""
    judged = [row for row in record["rows"] if row.get("met") is not None]
    if not judged:
        return "This results file does not say which goals were met."
    missed = [row for row in judged if not row["met"]]
    text = "Goals met in this run: %d of %d." % (len(judged) - len(missed), len(judged))
    if missed:
        text += " Not met: " + "; ".join("%s (goal %s)" % (row["label"], row["goal"]) for row in missed) + "."
    return text.replace("*", "\\*")


class BenchResults(SphinxDirective):
    required_arguments = 1

    def run(self) -> List[nodes.Node]:
        relative, path = self.env.relfn2path(self.arguments[0], self.env.current_document.docname)
        self.env.note_dependency(relative)
        try:
            with open(path) as f:
                record = json.load(f)
            rows = table_rows(record)
        except (OSError, ValueError, KeyError) as error:
            logger.warning("bench-results: %s: %r", path, error, location=self.get_location())
            return []
        header = ["measurement", "unit", "ours", "twisted.mail", "Dovecot", "vs Dovecot", "vs twisted.mail"]
        lines = [".. list-table::", "   :header-rows: 1", "   :class: bench-results", ""]
        for row in [header] + rows:
            # "a. bulk ..." would start an enumerated list: escape the dot (and any asterisk)
            label = re.sub(r"^(\w)\.", r"\1\\.", row[0].replace("*", "\\*"))
            lines.append("   * - " + label)
            lines += ["     - " + cell for cell in row[1:]]
        facts = [("measured", record.get("date")), ("commit", record.get("commit")),
                 ("machine", record.get("machine")), ("command", record.get("command"))]
        lines += [""] + ["| %s: %s" % (name, "``%s``" % value if name in ("commit", "command") else value)
                         for name, value in facts if value]
        lines += ["", goals_sentence(record)]
        rounds = len(record.get("rounds") or [])
        spread_note = (" Each cell: median (min–max) over %d rounds; ratios taken within each round." % rounds
                       if rounds > 1 else "")
        lines += ["", "Ratios: how many times better ours is (above 1: ours is better)." + spread_note +
                  " Raw numbers: :download:`%s <%s>`." % (os.path.basename(path), self.arguments[0])]
        container = nodes.container(classes=["bench-results"])
        self.state.nested_parse(StringList(lines, source=path), self.content_offset, container)
        return [container]


def setup(app: Sphinx) -> Dict[str, Any]:
    app.add_directive("bench-results", BenchResults)
    return {"parallel_read_safe": True, "version": "1"}
