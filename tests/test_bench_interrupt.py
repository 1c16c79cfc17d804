"""Ctrl-C during ``make bench`` ends it with one line, and nothing runs after."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.conftest import ROOT, environment


def test_ctrl_c_during_the_benchmarks_is_one_line_and_stops_them_all() -> None:
    # `make bench QUICK=1`, in a process group of its own, as a terminal's foreground job.
    bench = subprocess.Popen(
        ["make", "--no-print-directory", "bench", "QUICK=1"],
        cwd=ROOT,
        env=environment({"PYTHONUNBUFFERED": "1"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert bench.stderr is not None
        deadline = time.monotonic() + 120
        seen: list[str] = []
        while "round 1/" not in (line := bench.stderr.readline()):  # servers up, calls under way
            assert line, f"the benchmark ended before its first round: {seen}"
            assert time.monotonic() < deadline, "no round within 120 s"
            seen.append(line)
        os.killpg(bench.pid, signal.SIGINT)  # Ctrl-C reaches the whole group: benchmark, servers, runner
        out, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
    assert bench.returncode == -signal.SIGINT, "make ends by the Ctrl-C, as a terminal expects"
    lines = [line for line in err.splitlines() if not line.startswith("round ")]
    assert lines == ["benchmarks.core: interrupted"], "one line: no traceback, and no '*** [bench] Interrupt'"
    assert "== benchmarks.events" not in out  # nothing ran after it
