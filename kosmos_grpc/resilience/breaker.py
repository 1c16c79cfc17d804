"""A circuit breaker per target agent: stop calling an agent that keeps failing, probe it later."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from prometheus_client import Gauge

from kosmos_grpc.errors import CircuitOpen

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CIRCUIT_STATE", "BreakerPolicy", "CircuitBreaker", "CircuitState"]

#: Each caller's breaker to each target: 0 closed, 1 half-open, 2 open.
CIRCUIT_STATE = Gauge(
    "kosmos_circuit_state",
    "State of the circuit breaker from a caller to a target agent (0 closed, 1 half-open, 2 open)",
    ["source", "target"],
)

DEFAULT_COUNTED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL})
# A caller's own mistakes say nothing of the agent's health: never counted, whatever the config.
NEVER_COUNTED = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED})


class CircuitState(enum.IntEnum):
    """Where a breaker stands; the value is what the gauge shows."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens and how it recovers."""

    failure_threshold: int = 5
    recovery_timeout: float = 30.0
    half_open_max_calls: int = 1
    counted: frozenset[grpc.StatusCode] = field(default=DEFAULT_COUNTED)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.half_open_max_calls < 1 or self.recovery_timeout < 0:
            raise ValueError(
                "failure_threshold and half_open_max_calls must be at least 1, recovery_timeout not negative"
            )
        object.__setattr__(self, "counted", frozenset(self.counted) - NEVER_COUNTED)


class CircuitBreaker:
    """Counts consecutive failures of calls to one agent.

    Closed: calls go through; ``failure_threshold`` counted failures in a row open it. Open:
    calls fail at once with :class:`CircuitOpen`. After ``recovery_timeout`` it is half-open:
    up to ``half_open_max_calls`` probes go through; a success closes it, a failure re-opens it.
    ``clock`` (default ``time.monotonic``) is injectable so tests need not wait.
    """

    __slots__ = ("_clock", "_failures", "_opened_at", "_probes", "policy", "source", "state", "target")

    def __init__(
        self,
        target: str,
        policy: BreakerPolicy | None = None,
        *,
        source: str = "client",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.source = source
        self.policy = policy or BreakerPolicy()
        self.state = CircuitState.CLOSED
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        # Read when scraped: an open circuit whose recovery timeout has passed shows half-open
        # without waiting for a call, and the calls themselves pay nothing for the gauge.
        CIRCUIT_STATE.labels(source, target).set_function(lambda: int(self.current()))

    @property
    def failures(self) -> int:
        """Counted failures in a row so far."""
        return self._failures

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a probe through (0 unless open)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.policy.recovery_timeout - self._clock())

    def current(self) -> CircuitState:
        """The state now: an open circuit whose recovery timeout has passed reads half-open."""
        if self.state is CircuitState.OPEN and self.retry_in() == 0.0:
            self._move(CircuitState.HALF_OPEN)
            self._probes = 0
        return self.state

    def enter(self) -> None:
        """Let a call through, or raise CircuitOpen saying when the next try will be."""
        if self.state is CircuitState.CLOSED:
            return
        state = self.current()
        if state is CircuitState.HALF_OPEN and self._probes < self.policy.half_open_max_calls:
            self._probes += 1
            return
        if state is CircuitState.HALF_OPEN:
            raise CircuitOpen(
                f"the circuit to {self.target!r} is half-open and its probe calls are in flight; try again shortly",
                metadata={"origin": self.target},
                retry_after=0.0,
            )
        wait = self.retry_in()
        raise CircuitOpen(
            f"the circuit to {self.target!r} is open after {self._failures} failures in a row; "
            f"it will let a call through in {wait:.1f} s",
            metadata={"origin": self.target},
            retry_after=wait,
        )

    def succeeded(self) -> None:
        """A call let through by :meth:`enter` succeeded."""
        if self.state is CircuitState.CLOSED:
            self._failures = 0
        else:
            self._close()

    def failed(self, code: grpc.StatusCode) -> None:
        """A call let through by :meth:`enter` failed with ``code``."""
        if code not in self.policy.counted:
            # Not the agent's fault: a probe that ends this way still proves it answers.
            if self.state is not CircuitState.CLOSED:
                self._close()
            return
        self._failures += 1
        if self.state is CircuitState.HALF_OPEN or self._failures >= self.policy.failure_threshold:
            self._open()

    def abandoned(self) -> None:
        """A call let through by :meth:`enter` ended without an outcome (cancelled): free its probe."""
        if self.state is CircuitState.HALF_OPEN and self._probes > 0:
            self._probes -= 1

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._move(CircuitState.OPEN)

    def _close(self) -> None:
        self._failures = 0
        self._move(CircuitState.CLOSED)

    def _move(self, state: CircuitState) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.target!r}, state={self.state.name}, failures={self._failures})"
