"""Retries by tenacity: retryable statuses only, the server's delay honoured, never past the deadline."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_before_delay
from tenacity.wait import wait_base, wait_exponential_jitter

from kosmos_grpc.errors import KosmosError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["RetryPolicy", "is_retryable", "wait_server_hint"]

T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    """UNAVAILABLE, and RESOURCE_EXHAUSTED when the server said when to try again (RetryInfo)."""
    return isinstance(exc, KosmosError) and exc.retryable


class wait_server_hint(wait_base):
    """Wait what the server asked for in its RetryInfo, else what ``fallback`` says."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        hint = getattr(error, "retry_after", None)
        if isinstance(hint, int | float) and hint >= 0:
            return float(hint)
        return float(self.fallback(retry_state))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How calls to one agent are retried: ``attempts`` in all, exponential backoff with jitter.

    ``attempt_timeout``: the longest one attempt may take, in seconds (None: only the share of
    the caller's deadline that :meth:`ResiliencePolicy.attempt_seconds` gives it).
    """

    attempts: int = 3
    initial: float = 0.1
    maximum: float = 10.0
    jitter: float = 0.1
    attempt_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial < 0 or self.maximum < 0 or self.jitter < 0:
            raise ValueError("retry attempts must be at least 1, and its delays not negative")
        if self.attempt_timeout is not None and not self.attempt_timeout > 0:
            raise ValueError("attempt_timeout must be above zero, or None")

    def retrying(self, deadline: float | None) -> AsyncRetrying:
        """A tenacity controller for one call whose deadline is ``deadline`` (``time.monotonic``)."""
        stop: Any = stop_after_attempt(self.attempts)
        if deadline is not None:
            # Stops before a retry that would start past the deadline, backoff included.
            stop = stop | stop_before_delay(deadline - time.monotonic())
        return AsyncRetrying(
            stop=stop,
            wait=wait_server_hint(
                wait_exponential_jitter(multiplier=self.initial, max=self.maximum, jitter=self.jitter)
            ),
            retry=retry_if_exception(is_retryable),
            reraise=True,
        )

    async def after(self, first: KosmosError, attempt: Callable[[], Awaitable[T]], deadline: float | None) -> T:
        """Go on retrying ``attempt``, whose first try (made outside tenacity, so that a call that
        succeeds at once pays nothing for retries) failed with ``first``."""
        failed: KosmosError | None = first

        async def again() -> T:
            nonlocal failed
            if failed is not None:
                error, failed = failed, None
                raise error
            return await attempt()

        result: T = await self.retrying(deadline)(again)
        return result
