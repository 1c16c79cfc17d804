"""Deadline arithmetic: the time a call has left, and whether gRPC's deadline or the TTL ends it first."""

from __future__ import annotations

import time

from kosmos_grpc.errors import DeadlineExceeded

__all__ = ["past_deadline", "time_left", "timer_for"]

# When the caller's gRPC deadline is no later than the TTL, gRPC's own deadline (which cancels
# the handler) is enough and no timer of ours is needed. gRPC sends a timeout rounded up to
# three significant digits (30 s arrives as up to 30.1 s), so "no later" allows for 1% more.
_DEADLINE_ROUNDING = 0.01
_DEADLINE_SLACK = 0.002


def time_left(deadline: float, agent: str, action: str = "") -> float:
    """Seconds before ``deadline`` (``time.monotonic``) to call ``agent.action``; DeadlineExceeded when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        what = f"{agent}.{action}" if action else agent
        raise DeadlineExceeded(f"no time left to call {what}: the deadline has passed")
    return left


def timer_for(grpc_left: float | None, ttl_left: float) -> tuple[float | None, float]:
    """A served call's timer and seconds left, from gRPC's time remaining and the envelope's TTL.

    The timer is what our own deadline must enforce, None when gRPC's deadline suffices.
    """
    if grpc_left is not None and grpc_left <= ttl_left * (1 + _DEADLINE_ROUNDING) + _DEADLINE_SLACK:
        return None, min(grpc_left, ttl_left)
    return ttl_left, ttl_left


def past_deadline(agent: str, action: str) -> DeadlineExceeded:
    """The error of a handler cancelled at its deadline."""
    return DeadlineExceeded(f"{agent}.{action} ran past its deadline (the envelope's TTL) and was cancelled")
