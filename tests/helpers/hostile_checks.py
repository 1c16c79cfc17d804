"""The attacked servers as the suite sees them (child processes, stopped by PID) and what every answer must be.

Each server runs in a process of its own (``tests.helpers.hostile_servers``), so the memory read
from ``/proc/<pid>/statm`` is the server's alone, and its stderr goes to a file the suite reads
after each attack for tracebacks.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, Phase, settings

from kosmos_grpc.envelope import DEFAULT_PAYLOAD_LIMIT

__all__ = [
    "DETAILS_LIMIT",
    "HEALTH_SERVICE",
    "RECEIVE_LIMIT",
    "TRAILERS_LIMIT",
    "Answer",
    "Served",
    "check_deliberate",
    "error_info",
    "start_servers",
]

#: The longest status message a hostile request may get back, and all its trailers together.
DETAILS_LIMIT = 1024
TRAILERS_LIMIT = 4096
#: What a server takes in before gRPC itself refuses a message (twice the payload limit, plus headroom).
RECEIVE_LIMIT = 2 * DEFAULT_PAYLOAD_LIMIT + 64 * 1024
# Statuses that only a crash, a dropped connection or gRPC's own failure produce, never a decision.
_NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNAVAILABLE}
_PAGE = os.sysconf("SC_PAGE_SIZE")
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass
class Answer:
    """How a call ended: its status, message and trailers (OK has none)."""

    code: grpc.StatusCode
    details: str = ""
    trailers: tuple[tuple[str, str | bytes], ...] = ()
    error: grpc.RpcError | None = None

    @classmethod
    def of(cls, error: grpc.RpcError) -> Answer:
        assert isinstance(error, grpc.Call)
        return cls(error.code(), error.details() or "", tuple(error.trailing_metadata() or ()), error)

    def __repr__(self) -> str:
        return f"Answer({self.code.name}, {self.details[:200]!r}, {self.trailer_bytes()} trailer bytes)"

    def trailer_bytes(self) -> int:
        return sum(len(key) + len(value) for key, value in self.trailers)


def error_info(answer: Answer) -> error_details_pb2.ErrorInfo | None:
    """The google.rpc.ErrorInfo a mesh status carries, if it carries one."""
    if answer.error is None:
        return None
    try:
        status = rpc_status.from_call(answer.error)
    except ValueError:  # its code differs from the call's: the call was ended by something else
        return None
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


def check_deliberate(answer: Answer, *, request_bytes: int = 0, mesh: bool = True) -> None:
    """Fail unless ``answer`` is a status someone chose: never UNKNOWN, INTERNAL or a dropped call, short,
    and (``mesh``: from a kosmos servicer) carrying the mesh's ErrorInfo, so that gRPC's own refusals
    (a trailer over the metadata limit: RESOURCE_EXHAUSTED "Stream removed") do not pass for the mesh's.
    Past the server's receive limit gRPC's own RESOURCE_EXHAUSTED is the documented answer."""
    if answer.code == grpc.StatusCode.OK:
        return
    assert answer.code not in _NEVER, f"not a deliberate status: {answer!r}"
    assert len(answer.details) < DETAILS_LIMIT, f"status message of {len(answer.details)} characters: {answer!r}"
    assert answer.trailer_bytes() < TRAILERS_LIMIT, f"{answer.trailer_bytes()} bytes of trailers: {answer!r}"
    if request_bytes > RECEIVE_LIMIT and answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return
    if mesh:
        info = error_info(answer)
        assert info is not None, f"a status without the mesh's ErrorInfo (not the mesh's own answer): {answer!r}"
        assert info.domain == "kosmos", answer


@dataclass
class Served:
    """A server in a child process: its PID, address, a channel to it and the stderr it has written."""

    kind: str
    process: subprocess.Popen[str]
    address: str
    log: Path
    channel: grpc.Channel = field(init=False)
    #: Its RSS once warmed up, before the first attack (set by the suite).
    baseline: int = 0
    _read: int = 0

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )

    def rss(self) -> int:
        """The server process's resident memory, in bytes."""
        pages = Path(f"/proc/{self.process.pid}/statm").read_text().split()[1]
        return int(pages) * _PAGE

    def wait_for_rss_below(self, bound: int, limit: float = 3.0) -> int:
        """The RSS once it is at most ``bound``, or after ``limit`` seconds if it never gets there (polled)."""
        deadline = time.monotonic() + limit
        rss = self.rss()
        while rss > bound and time.monotonic() < deadline:
            time.sleep(0.05)
            rss = self.rss()
        return rss

    def new_log(self) -> str:
        """What the server wrote to stderr since the last call."""
        with self.log.open("rb") as stream:
            stream.seek(self._read)
            text = stream.read()
        self._read += len(text)
        return text.decode(errors="replace")

    def serving(self) -> bool:
        """Whether its health says SERVING (for the whole server)."""
        check = self.channel.unary_unary(
            f"/{HEALTH_SERVICE}/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        reply = check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self) -> None:
        """Close the channel and stop the process by its PID: stdin closed, SIGTERM, then SIGKILL."""
        self.channel.close()
        process = self.process
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


def start_servers(kinds: list[str], folder: Path, env: dict[str, str], cwd: Path, limit: float = 30.0) -> list[Served]:
    """Start ``python -m tests.helpers.hostile_servers KIND`` for each kind, all at once; wait (up to
    ``limit`` s in all) for each to print its address. Those started are stopped if one fails to."""
    processes: list[tuple[str, subprocess.Popen[str], Path]] = []
    for kind in kinds:
        log = folder / f"{kind}.stderr"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.helpers.hostile_servers", kind],
                cwd=cwd,
                env=env,
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        processes.append((kind, process, log))
    served: list[Served] = []
    deadline = time.monotonic() + limit
    try:
        for kind, process, log in processes:
            assert process.stdout is not None
            with selectors.DefaultSelector() as selector:
                selector.register(process.stdout, selectors.EVENT_READ)
                ready = selector.select(max(0.0, deadline - time.monotonic()))
            address = process.stdout.readline().strip() if ready else ""
            if not address:
                raise AssertionError(f"the {kind} did not start: {log.read_text()[-2000:]}")
            served.append(Served(kind, process, address, log))
    except BaseException:
        for _, process, _ in processes:
            process.kill()
            process.wait(5)
        raise
    return served


#: How every property-based attack runs: derandomized (the same examples in every CI run), no
#: example database, one failure reported and shrunk, so that a failing run stays within its timeout.
ATTACK = settings(
    max_examples=80,
    deadline=None,
    database=None,
    derandomize=True,
    # One failure per test, shrunk, and no "explain" phase: a failing run stays within the test's timeout.
    report_multiple_bugs=False,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
