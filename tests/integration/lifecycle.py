"""``twistd -n pop3ng --demo`` for the tests that run what the README and the quickstart print.

The demo prints its ports in the lines it tells users to run (``curl ... pop3://127.0.0.1:PORT``),
so it is started on fixed ports rather than ``tcp:0``: ports the kernel had free a moment ago,
taken again with new ones when another process won the race for them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from .dovecot import free_port
from .support import ROOT, TWISTD_MAIN, stop_process


@dataclass
class Demo:
    """A running demo server; its tree (``pop3ng-demo/``) and output file are under ``work``."""

    process: subprocess.Popen
    work: str
    log_path: str
    plain: int
    secure: int

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        stop_process(self.process)


def start_demo(work: str, attempts: int = 5, timeout: float = 60.0) -> Demo:
    """Start the demo in ``work`` (created if missing); return once both its listeners are up."""
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    log_path = os.path.join(work, "demo.log")
    output = ""
    for _ in range(attempts):
        plain, secure = free_port(), free_port()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", TWISTD_MAIN, "-n", "--pidfile=", "pop3ng", "--demo",
                 "--listen", "tcp:%d:interface=127.0.0.1" % plain,
                 "--tls-listen", "tcp:%d:interface=127.0.0.1" % secure],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env)
        demo = Demo(process, work, log_path, plain, secure)
        listening = {plain, secure}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            output = demo.output()
            started = {int(port) for port in re.findall(r"starting on (\d+)", output)}
            if listening <= started:
                return demo
            time.sleep(0.05)
        demo.stop()
        output = demo.output()
        if "in use" not in output:
            raise RuntimeError("twistd pop3ng --demo did not start:\n" + output)
        # another process bound one of the ports after free_port() released it: new ports
    raise RuntimeError("no free ports for the demo in %d attempts:\n%s" % (attempts, output))
