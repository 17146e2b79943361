"""Coverage-guided fuzzing of pop3ng's parsers with atheris (``pip install atheris``).

    python3 fuzz/run.py TARGET [SECONDS]      # e.g. python3 fuzz/run.py server_session 600

TARGET is one of ``twisted_pop3ng.testing.fuzz_targets.TARGETS``. The seed corpus is
``fuzz/corpus/TARGET/``; new inputs that reach new code are written to ``fuzz/findings/TARGET/``
(not in git: copy the good ones into the corpus), crashes to ``fuzz/findings/crash-*``.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list) -> int:
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 64
    import atheris

    with atheris.instrument_imports(include=["twisted_pop3ng"]):
        from twisted_pop3ng.testing import fuzz_targets
    name = argv[1]
    if name not in fuzz_targets.TARGETS:
        print("unknown target %r (known: %s)" % (name, ", ".join(sorted(fuzz_targets.TARGETS))),
              file=sys.stderr)
        return 64
    seconds = int(argv[2]) if len(argv) > 2 else 60
    findings = os.path.join(HERE, "findings", name)
    os.makedirs(findings, exist_ok=True)
    corpus = os.path.join(HERE, "corpus", name)
    args = [argv[0], "-max_total_time=%d" % seconds, "-max_len=4096", "-timeout=10",
            "-artifact_prefix=%s/crash-%s-" % (os.path.join(HERE, "findings"), name),
            "-print_final_stats=1", findings, corpus]
    atheris.Setup(args, fuzz_targets.TARGETS[name])
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
