"""Coordination patterns over delegation: sequential, parallel, scatter-gather and Saga.

Every call of one workflow shares one correlation_id: given a :class:`Coordinator`, a pattern
makes a new scope (a new correlation_id); given a :class:`ScopedClient` (``ctx.client`` in a
handler, or ``coordinator.scope(timeout_ms=...)``), it uses that one, deadline included.
Failures are the :class:`KosmosError` of the call that failed, never an ``ExceptionGroup``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from kosmos_grpc.client import DEFAULT_TIMEOUT_MS, Coordinator, ScopedClient
from kosmos_grpc.envelope import new_message_id
from kosmos_grpc.errors import ActionFailed, DeadlineExceeded, InvalidEnvelope, KosmosError, SagaFailed, is_final
from kosmos_grpc.subjects import AUDIT_LOG

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping, Sequence

    from tenacity.wait import wait_base

    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.calls import Response

__all__ = [
    "AUDIT_TIMEOUT_MS",
    "Call",
    "Saga",
    "SagaResult",
    "SagaStep",
    "ScatterResult",
    "Step",
    "parallel",
    "scatter_gather",
    "sequential",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long one audit event may be waited for by the bus (then given up, logged, and none sent for a while).
AUDIT_TIMEOUT_MS, AUDIT_PAUSE_SECONDS = 2_000, 10.0
# Compensations are idempotent by convention, so a short backoff between attempts is enough.
_COMPENSATION_WAIT = wait_exponential(multiplier=0.05, max=2)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of :func:`sequential`: its payload is the previous step's result."""

    agent: str
    action: str
    _: KW_ONLY
    timeout_ms: float | None = DEFAULT_TIMEOUT_MS

    def __str__(self) -> str:
        return f"{self.agent}.{self.action}"


@dataclass(frozen=True, slots=True)
class Call:
    """One call with its own payload: for :func:`parallel`, or a saga step's compensation."""

    agent: str
    action: str
    payload: Mapping[str, Any] | None = None
    _: KW_ONLY
    timeout_ms: float | None = DEFAULT_TIMEOUT_MS

    def __str__(self) -> str:
        return f"{self.agent}.{self.action}"


def _scoped(client: Coordinator | ScopedClient) -> ScopedClient:
    """The client a workflow runs through: the one given, or a new scope (a new correlation_id)."""
    return client.scope() if isinstance(client, Coordinator) else client


async def sequential(
    client: Coordinator | ScopedClient, steps: Sequence[Step], payload: Mapping[str, Any] | None = None
) -> list[Response]:
    """Run ``steps`` one after another, each step's result the next one's payload.

    Returns:
        Every step's response, in order; the last one is the pipeline's output.

    Raises:
        KosmosError: the failing step's error, with a note naming the step; later steps never run.
    """
    scoped = _scoped(client)
    responses: list[Response] = []
    current = payload
    for index, step in enumerate(steps, 1):
        try:
            response = await scoped.delegate(step.agent, step.action, current, timeout_ms=step.timeout_ms)
        except KosmosError as exc:
            exc.add_note(f"sequential step {index} of {len(steps)} ({step}) failed")
            raise
        responses.append(response)
        current = response.result
    return responses


@overload
async def parallel(
    client: Coordinator | ScopedClient, calls: Sequence[Call], *, collect: Literal[False] = False
) -> list[Response]: ...
@overload
async def parallel(
    client: Coordinator | ScopedClient, calls: Sequence[Call], *, collect: Literal[True]
) -> list[Response | KosmosError]: ...
async def parallel(
    client: Coordinator | ScopedClient, calls: Sequence[Call], *, collect: bool = False
) -> list[Response] | list[Response | KosmosError]:
    """Run ``calls`` concurrently; their responses in the order of ``calls``.

    By default the first failure cancels the calls still running (on their agents too) and is
    raised. With ``collect=True`` nothing is cancelled: each outcome is a Response or the
    KosmosError that call failed with.
    """
    scoped = _scoped(client)
    total = len(calls)

    async def run(index: int, call: Call) -> Response:
        try:
            return await scoped.delegate(call.agent, call.action, call.payload, timeout_ms=call.timeout_ms)
        except KosmosError as exc:
            exc.add_note(f"parallel call {index} of {total} ({call}) failed")
            raise

    if collect:

        async def settle(index: int, call: Call) -> Response | KosmosError:
            try:
                return await run(index, call)
            except KosmosError as exc:
                return exc

        async with asyncio.TaskGroup() as group:
            settled = [group.create_task(settle(i, call)) for i, call in enumerate(calls, 1)]
        return [task.result() for task in settled]

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run(i, call)) for i, call in enumerate(calls, 1)]
    except ExceptionGroup as failures:
        # The TaskGroup records errors as they happen and cancels the rest after the first.
        first = failures.exceptions[0]
        if isinstance(first, KosmosError):
            raise first from None
        raise
    return [task.result() for task in tasks]


@dataclass(slots=True)
class ScatterResult:
    """What each agent of a scatter-gather gave: every agent is in exactly one of the two."""

    successes: dict[str, Response] = field(default_factory=dict)
    failures: dict[str, KosmosError] = field(default_factory=dict)


async def scatter_gather(
    client: Coordinator | ScopedClient,
    agents: Sequence[str],
    action: str,
    payload: Mapping[str, Any] | None,
    timeout_ms: float,
) -> ScatterResult:
    """Send ``action`` to every agent at once and gather what has come back by one deadline.

    An agent that has not answered by then is a failure (DeadlineExceeded), as is one that
    failed; nothing is dropped. An agent named twice is asked once.
    """
    if not timeout_ms > 0:  # also true for NaN
        raise InvalidEnvelope("timeout_ms", f"timeout_ms must be a number above zero; got {timeout_ms}")
    scoped = _scoped(client)
    deadline = time.monotonic() + timeout_ms / 1000

    async def ask(agent: str) -> Response | KosmosError:
        left_ms = (deadline - time.monotonic()) * 1000
        if left_ms <= 0:
            return DeadlineExceeded(f"no time left to call {agent}.{action}: the scatter-gather deadline has passed")
        try:
            return await scoped.delegate(agent, action, payload, timeout_ms=left_ms)
        except KosmosError as exc:
            return exc

    async with asyncio.TaskGroup() as group:
        asked = {agent: group.create_task(ask(agent)) for agent in dict.fromkeys(agents)}
    result = ScatterResult()
    for agent, task in asked.items():
        outcome = task.result()
        if isinstance(outcome, KosmosError):
            result.failures[agent] = outcome
        else:
            result.successes[agent] = outcome
    return result


@dataclass(frozen=True, slots=True, eq=False)
class SagaStep:
    """One step of a :class:`Saga` and what undoes it.

    ``compensate`` is ``(agent, action)`` or a :class:`Call` (whose payload is extended); it is
    sent ``{"payload": <the step's payload>, "result": <the step's result>}``. Or it is a function
    of the step's payload and result returning the :class:`Call` that undoes it, sent as it is
    (an undo that takes the id the step made, say). A step without one needs no undoing.
    ``name`` (default ``agent.action``) names it in audit events. Steps compare by identity.
    """

    agent: str
    action: str
    payload: Mapping[str, Any] | None = None
    compensate: Call | tuple[str, str] | Callable[[dict[str, Any], Any], Call] | None = None
    _: KW_ONLY
    name: str = ""
    timeout_ms: float | None = DEFAULT_TIMEOUT_MS

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"{self.agent}.{self.action}")

    def compensation(self, result: Any) -> tuple[Call, dict[str, Any]] | None:
        """The call that undoes this step, given what it returned, and its payload; None when it needs none."""
        undo, done = self.compensate, dict(self.payload or {})
        if undo is None:
            return None
        if callable(undo):
            call = undo(done, result)
            return call, dict(call.payload or {})
        call = undo if isinstance(undo, Call) else Call(*undo)
        return call, {**(call.payload or {}), "payload": done, "result": result}


@dataclass(frozen=True, slots=True)
class SagaResult:
    """A saga that completed: every step's response, in order."""

    saga_id: str
    correlation_id: str
    responses: list[Response]


async def _to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` in a task of its own to its end, shielded; a cancellation meanwhile is raised after."""
    task = asyncio.create_task(work)
    cancelled: asyncio.CancelledError | None = None
    # Waiting is bounded: undoing is made of calls with their own timeouts and a bounded retry.
    while not task.done():
        try:
            await asyncio.wait({task})  # never cancels the task, never raises its failure
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        if not task.cancelled() and task.exception() is not None:
            log.error("undoing a cancelled saga failed: %r", task.exception())
        raise cancelled
    return task.result()


class Saga:
    """Steps run in order; when one fails, those completed are compensated in reverse order.

    With a ``bus``, each step's progress (``started``, ``completed``, ``failed``,
    ``compensated``, ``compensation_failed``) and the saga's outcome (step ``""``, status
    ``succeeded``, ``rolled_back``, ``failed`` or ``cancelled``) are published on
    ``kosmos.events.audit.log`` under the workflow's correlation_id. Publishing failures are
    logged, never change the outcome.
    """

    def __init__(
        self,
        steps: Sequence[SagaStep],
        bus: EventBus | None = None,
        *,
        name: str = "saga",
        compensation_attempts: int = 3,
        compensation_wait: wait_base = _COMPENSATION_WAIT,
    ) -> None:
        if compensation_attempts < 1:
            raise ValueError("compensation_attempts must be at least 1")
        self.steps = list(steps)
        self.bus = bus
        self.name = name
        self.compensation_attempts = compensation_attempts
        self.compensation_wait = compensation_wait
        self._audit_paused_until = 0.0

    async def run(self, client: Coordinator | ScopedClient) -> SagaResult:
        """Run the saga through ``client``.

        Raises:
            SagaFailed: a step failed; it says which, why, and what was and was not compensated.
            asyncio.CancelledError: the run was cancelled; the completed steps were compensated first.
        """
        scoped = _scoped(client)
        saga_id = new_message_id()
        done: list[tuple[SagaStep, Response]] = []
        try:
            for step in self.steps:
                await self._audit(scoped, saga_id, step.name, "started")
                try:
                    response = await scoped.delegate(step.agent, step.action, step.payload, timeout_ms=step.timeout_ms)
                except KosmosError as cause:
                    failed_step, failure = step, cause
                    break
                done.append((step, response))
                await self._audit(scoped, saga_id, step.name, "completed")
            else:
                await self._audit(scoped, saga_id, "", "succeeded")
                return SagaResult(saga_id, scoped.correlation_id, [response for _, response in done])
        except asyncio.CancelledError:
            # The caller cancelled or went away: what was done is undone all the same, out of reach
            # of the cancellation, before it goes on.
            await _to_the_end(self._cancelled(scoped, saga_id, done))
            raise
        raise await _to_the_end(self._fail(scoped, saga_id, failed_step, failure, done)) from failure

    async def _fail(
        self,
        scoped: ScopedClient,
        saga_id: str,
        failed_step: SagaStep,
        cause: KosmosError,
        done: list[tuple[SagaStep, Response]],
    ) -> SagaFailed:
        """Audit the failed step, undo the completed ones and audit the outcome; the SagaFailed that says so."""
        await self._audit(scoped, saga_id, failed_step.name, "failed", error=cause.code.name)
        compensated, failures = await self._compensate(scoped, saga_id, done)
        outcome = "failed" if failures else "rolled_back"
        await self._audit(scoped, saga_id, "", outcome, error=cause.code.name, failed_step=failed_step.name)
        undone = (
            f"could not compensate {', '.join(s.name for s in failures)}"
            if failures
            else f"compensated {len(compensated)} completed step(s)"
        )
        return SagaFailed(
            f"saga {saga_id} failed at step {failed_step.name}: {cause}; {undone}",
            metadata={"saga_id": saga_id, "step": failed_step.name},
            cause=cause,
            step=failed_step,
            responses=[response for _, response in done],
            compensated=compensated,
            compensation_failures=failures,
        )

    async def _cancelled(self, scoped: ScopedClient, saga_id: str, done: list[tuple[SagaStep, Response]]) -> None:
        """Undo the completed steps of a cancelled run and audit its outcome."""
        await self._compensate(scoped, saga_id, done)
        await self._audit(scoped, saga_id, "", "cancelled")

    async def _compensate(
        self, scoped: ScopedClient, saga_id: str, done: list[tuple[SagaStep, Response]]
    ) -> tuple[list[SagaStep], dict[SagaStep, KosmosError]]:
        """Undo the completed steps, last first, each retried; those undone, and those that could not be."""
        # Undoing must not die with the workflow's deadline (often the very reason a step
        # failed): compensations get their own timeouts, under the same correlation_id.
        undoer = scoped.coordinator.scope(correlation_id=scoped.correlation_id)
        compensated: list[SagaStep] = []
        failures: dict[SagaStep, KosmosError] = {}
        for step, response in reversed(done):
            try:
                undo = step.compensation(response.result)
            except Exception as exc:  # the workflow's own undo function failed: the step stays done, said so
                undo, failures[step] = None, ActionFailed(f"making the undo of {step.name} failed: {exc!r}")
            if undo is None:
                continue
            call, payload = undo
            # One message_id for every attempt, so that the agent answers a retry of a compensation
            # it already ran (its reply lost) from memory instead of running it twice. A new one only
            # after a failure the agent remembers: under the old id it would only get that back.
            message_id = new_message_id()
            try:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self.compensation_attempts),
                    wait=self.compensation_wait,
                    retry=retry_if_exception_type(KosmosError),
                    reraise=True,
                ):
                    with attempt:
                        try:
                            await undoer.delegate(
                                call.agent, call.action, payload, timeout_ms=call.timeout_ms, message_id=message_id
                            )
                        except KosmosError as exc:
                            if is_final(exc):
                                message_id = new_message_id()
                            raise
            except KosmosError as exc:
                log.error("saga %s: compensating %s with %s failed: %s", saga_id, step.name, call, exc)
                failures[step] = exc
                await self._audit(scoped, saga_id, step.name, "compensation_failed", error=exc.code.name)
            else:
                compensated.append(step)
                await self._audit(scoped, saga_id, step.name, "compensated")
        return compensated, failures

    async def _audit(self, scoped: ScopedClient, saga_id: str, step: str, status: str, **extra: str) -> None:
        """Publish one audit event; a bus that fails is logged, never allowed to change the saga."""
        if self.bus is None or time.monotonic() < self._audit_paused_until:
            return
        event = {"saga_id": saga_id, "saga": self.name, "step": step, "status": status, **extra}
        try:
            # Acknowledged and bounded: audit events should reach the bus, but never hold up the saga long.
            await self.bus.publish(
                AUDIT_LOG, event, correlation_id=scoped.correlation_id, acknowledge=True, timeout_ms=AUDIT_TIMEOUT_MS
            )
        except Exception as exc:
            # A bus that failed once is not waited for again soon: undoing must not queue behind it.
            self._audit_paused_until = time.monotonic() + AUDIT_PAUSE_SECONDS
            log.warning("saga %s: could not publish %s %s on %s: %s", saga_id, step or "saga", status, AUDIT_LOG, exc)
