"""What a user's ``kosmos`` command costs in wall time, and what a dependency that is down adds.

Each command runs as a new process, as a user's shell runs it, against one Athena on loopback:
``kosmos --help``; ``kosmos call`` with no trace endpoint, with one that refuses the connection,
and with one that takes it and never answers; ``kosmos publish`` to a NATS server that is not
running. Medians over alternating runs, and each one's ratio to the plain call.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import harness

KOSMOS = str(Path(sys.executable).with_name("kosmos"))
PAYLOAD = '{"topic": "grpc"}'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _timed(args: list[str], env: dict[str, str]) -> float:
    """Seconds ``args`` took, from its start to its exit (a failing command is timed the same)."""
    started = time.perf_counter()
    subprocess.run(args, env=env, cwd=harness.ROOT, capture_output=True, timeout=60, check=False)
    return time.perf_counter() - started


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=harness.sized(15, 3), help="runs of each command")
    parser.add_argument("--quick", action="store_true", help="3 runs of each")
    runs = parser.parse_args().runs
    with harness.processes() as start, tempfile.TemporaryDirectory() as folder:
        athena = start("benchmarks.serve", "agent", "tests.helpers.toys:Athena")
        config = Path(folder) / "kosmos.toml"
        config.write_text(f'[agents.athena]\nobject = "tests.helpers.toys:Athena"\naddress = "{athena}"\n')
        nats = Path(folder) / "nats.toml"
        nats.write_text(f'[bus]\nnats = "nats://127.0.0.1:{_free_port()}"\n\n' + config.read_text())
        silent = socket.socket()  # takes the connection, never answers: a collector that hangs
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        call = [KOSMOS, "--config", str(config), "call", "athena", "answer", PAYLOAD]
        cases = {
            "kosmos --help": ([KOSMOS, "--help"], base),
            "kosmos call": (call, base),
            "kosmos call, OTLP endpoint refusing": (
                call,
                {**base, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{_free_port()}"},
            ),
            "kosmos call, OTLP endpoint silent": (
                call,
                {**base, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}"},
            ),
            "kosmos publish, NATS not running (--timeout-ms 1000)": (
                [KOSMOS, "--config", str(nats), "publish", "kosmos.events.x", "{}", "--timeout-ms", "1000"],
                base,
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        try:
            for _ in range(runs):  # alternating, so a busy moment of the machine falls on every case
                for name, (args, env) in cases.items():
                    times[name].append(_timed(args, env))
        finally:
            silent.close()
    plain = statistics.median(times["kosmos call"])
    print(f"== benchmarks.commands: each command a new process, median of {runs} alternating runs")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<56} {median * 1000:8.0f} ms   {median / plain:5.2f}x the plain call")


if __name__ == "__main__":
    harness.main(cli, "benchmarks.commands")
