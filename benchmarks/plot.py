"""Charts of a benchmark run: ``python3 -m benchmarks.plot RESULTS.json DIR`` (or ``benchmarks.run
--plot DIR``) draws each group of measurements as a bar chart, ours beside twisted.mail and Dovecot,
into DIR as PNG and SVG. Every chart carries the date, commit and machine of the run it shows. A bar
is the median over the run's rounds; when the rounds differ, a whisker spans the lowest to the highest.

The SVG files are reproducible (no timestamp, fixed element ids), so committing a redrawn chart
shows a diff only when the numbers changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

#: The peers in the order they are drawn, with their colours (ours stands out, the others are grey-blue).
PEERS = [("ours", "#d9480f"), ("twisted.mail", "#5c7cfa"), ("dovecot", "#868e96")]

#: (file name, title, measurement keys, axis label, logarithmic axis). A measurement no peer has is left
#: out; a chart left with none is not drawn.
CHARTS = [
    ("throughput", "Throughput (higher is better)", ["bulk", "tls_bulk", "big"], "MB/s", False),
    ("sessions", "Session rate (higher is better)", ["sessions"], "sessions per second", False),
    ("maildir", "Large maildir (lower is better)", ["many_cold", "many_warm", "many_uidl"],
     "seconds (log scale)", True),
    ("memory", "Memory (lower is better)", ["idle_kb"], "KB per idle connection (log scale)", True),
]


def load(path: str) -> Dict[str, Any]:
    """A results file written by ``benchmarks.run --json``; files from before the ``rows`` and
    provenance fields get the table's labels without the sizes filled in."""
    with open(path) as f:
        record: Dict[str, Any] = json.load(f)
    if "results" not in record:
        raise ValueError("%s: not a benchmarks.run --json file (no 'results')" % path)
    if "rows" not in record:
        from benchmarks.run import GOALS, ROWS

        record["rows"] = [{"key": key, "label": label.split(" %", 1)[0], "unit": unit,
                           "higher_is_better": higher, "goal": GOALS.get(key, ("",))[0]}
                          for key, label, unit, higher in ROWS]
    return record


def provenance(record: Dict[str, Any]) -> str:
    """One line naming the run: date, commit, machine."""
    parts = [record.get("date"), record.get("commit") and "commit %s" % record["commit"], record.get("machine")]
    return " · ".join(p for p in parts if p)


def _short_label(label: str) -> str:
    # "a. bulk RETR 2000 x 10 KB" -> "bulk RETR 2000 x 10 KB": the letters refer to the table.
    head, _, rest = label.partition(". ")
    return rest if rest and len(head) == 1 else label


def draw(record: Dict[str, Any], name: str, title: str, keys: Sequence[str], axis: str, log: bool,
         directory: str) -> List[str]:
    """Draw one chart; returns the files written (none when no peer has any of ``keys``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results: Dict[str, Dict[str, float]] = record["results"]
    spreads: Dict[str, Dict[str, List[float]]] = record.get("spread", {})  # [min, max] over the rounds
    labels = {row["key"]: _short_label(row["label"]) for row in record["rows"]}
    keys = [k for k in keys if any(k in results.get(peer, {}) for peer, _ in PEERS)]
    peers = [(peer, colour) for peer, colour in PEERS if peer in results]
    if not keys or not peers:
        return []
    matplotlib.rcParams["svg.hashsalt"] = "pop3ng-bench"  # stable element ids
    width = 0.8 / len(peers)
    inches = max(6.0, 2.2 + 2.4 * len(keys))
    fig, ax = plt.subplots(figsize=(inches, 4.2))
    for n, (peer, colour) in enumerate(peers):
        values = [results[peer].get(k) for k in keys]
        xs = [i + (n - (len(peers) - 1) / 2) * width for i in range(len(keys))]
        present = [(x, k, v) for x, k, v in zip(xs, keys, values) if v is not None and (v > 0 or not log)]
        ax.bar([x for x, _, _ in present], [v for _, _, v in present], width * 0.95, label=peer, color=colour)
        ranges = [spreads.get(peer, {}).get(k) for _, k, _ in present]
        if any(r and r[0] != r[1] for r in ranges):
            # The spread over the rounds: a whisker from the lowest round to the highest.
            low = [v - (r[0] if r else v) for (_, _, v), r in zip(present, ranges)]
            high = [(r[1] if r else v) - v for (_, _, v), r in zip(present, ranges)]
            ax.errorbar([x for x, _, _ in present], [v for _, _, v in present], yerr=[low, high], fmt="none",
                        ecolor="#212529", elinewidth=0.8, capsize=2)
        for (x, _, v), r in zip(present, ranges):
            # The median's figure, above the bar or above its whisker.
            ax.annotate(_number(v), (x, max(v, r[1]) if r else v), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8)
    if len(keys) == 1:
        ax.set_xlim(-1, 1)  # one group: keep the bars as narrow as in the wider charts
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([_wrap(labels.get(k, k)) for k in keys], fontsize=9)
    ax.set_ylabel(axis)
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.15)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, frameon=False, loc="best")
    ax.spines[["top", "right"]].set_visible(False)
    fig.text(0.01, 0.01, _wrap(provenance(record), int(inches * 18)), fontsize=6, color="#555555", va="bottom")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    os.makedirs(directory, exist_ok=True)
    written = []
    for ext, extra in (("svg", {"metadata": {"Date": None}}), ("png", {"dpi": 110, "metadata": {"Software": None}})):
        path = os.path.join(directory, "%s.%s" % (name, ext))
        fig.savefig(path, **extra)
        written.append(path)
    plt.close(fig)
    return written


def draw_all(record: Dict[str, Any], directory: str) -> List[str]:
    """Every chart of :data:`CHARTS` that has data; returns the files written."""
    written: List[str] = []
    for name, title, keys, axis, log in CHARTS:
        written += draw(record, name, title, keys, axis, log, directory)
    return written


def _number(value: float) -> str:
    if value >= 100:
        return "{:,.0f}".format(value)
    if value >= 10:
        return "%.1f" % value
    return "%.3g" % value


def _wrap(text: str, width: int = 18) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Draw a benchmarks.run --json file as charts.")
    parser.add_argument("results", help="the JSON file benchmarks.run --json wrote")
    parser.add_argument("directory", help="where the PNG and SVG files go")
    args = parser.parse_args(argv)
    try:
        record = load(args.results)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    for path in draw_all(record, args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
