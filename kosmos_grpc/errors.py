"""One exception hierarchy for the mesh, each class mapped to a gRPC status code.

Errors cross the wire as a ``google.rpc.Status`` whose details hold an ``ErrorInfo``
(reason, domain ``kosmos``, and metadata such as the offending field) and, where the server
knows when to try again (``retry_after``), a ``RetryInfo``; :func:`from_rpc_error` rebuilds
the same class on the client::

    KosmosError                      INTERNAL
    ├── InvalidEnvelope              INVALID_ARGUMENT   (field names the bad envelope field)
    ├── NotFound                     NOT_FOUND          (what a call names does not exist: a report, say)
    │   └── AgentNotFound                (the mesh knows no agent of that name)
    ├── PermissionDenied             PERMISSION_DENIED  (a write to a read-only database, say)
    ├── ActionNotFound               UNIMPLEMENTED
    ├── WrongCallKind                FAILED_PRECONDITION
    ├── ConfigError                  FAILED_PRECONDITION (the mesh config is missing or wrong)
    ├── DelegationLoop               FAILED_PRECONDITION (a delegation chain deeper than max_hops)
    ├── DuplicateMessage             ALREADY_EXISTS     (a stream, or a call with a huge reply, ran already)
    ├── DeadlineExceeded             DEADLINE_EXCEEDED  (also a TimeoutError)
    ├── AgentUnavailable             UNAVAILABLE
    │   └── CircuitOpen                (the caller's breaker refused the call without sending it)
    ├── DependencyUnavailable        UNAVAILABLE        (NATS, the broker: what the mesh needs is down)
    ├── ResourceExhausted            RESOURCE_EXHAUSTED
    │   ├── PayloadTooLarge
    │   └── SlowConsumer               (a stream's client read nothing for too long)
    ├── Cancelled                    CANCELLED
    ├── StreamBroken                 DATA_LOSS
    ├── SagaFailed                   the failing step's code (its steps done before were compensated)
    └── ActionFailed                 INTERNAL           (the handler raised; no traceback leaks)

An error that crossed the wire names in its ``origin`` metadata the agent whose failure it is,
so that an agent passing on the failure of an agent it called is not blamed (nor retried) for it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from kosmos_grpc.quoting import clip, clip_metadata

__all__ = [
    "ADDRESS",
    "ATTEMPT_TIMEOUT",
    "CAUSE",
    "DOMAIN",
    "MESH_HINT",
    "NOT_RUNNING",
    "ORIGIN",
    "REFUSED",
    "ActionFailed",
    "ActionNotFound",
    "AgentNotFound",
    "AgentUnavailable",
    "Cancelled",
    "CircuitOpen",
    "ConfigError",
    "DeadlineExceeded",
    "DelegationLoop",
    "DependencyUnavailable",
    "DuplicateMessage",
    "InvalidEnvelope",
    "KosmosError",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "ResourceExhausted",
    "SagaFailed",
    "SlowConsumer",
    "StreamBroken",
    "WrongCallKind",
    "from_rpc_error",
    "is_final",
    "to_status",
]

DOMAIN = "kosmos"
#: The metadata key naming the agent a failure comes from.
ORIGIN = "origin"
#: The metadata keys of an agent found unavailable: the address called, and why it failed there.
ADDRESS = "address"
CAUSE = "cause"
#: The cause of an agent that nothing listens for, and what its error then asks.
REFUSED = "connection refused"
#: The cause of a DEADLINE_EXCEEDED that the attempt's own timeout ended, the caller's deadline not yet.
ATTEMPT_TIMEOUT = "attempt timeout"
#: What an error that finds nothing listening asks, in every message that says so.
MESH_HINT = "is the mesh running? (start it with 'make run' or 'kosmos up')"
NOT_RUNNING = f": {MESH_HINT}"


class KosmosError(Exception):
    """Root of every error the mesh raises; ``code`` is the gRPC status it travels as."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: ClassVar[str] = "INTERNAL"
    #: Whether every error of the class travels as ``code``; False when each has its own (a saga's
    #: is its failing step's), so that the reason alone names the class on the way back.
    fixed_code: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        metadata: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether trying the same call again may succeed."""
        return self.code == grpc.StatusCode.UNAVAILABLE or (
            self.code == grpc.StatusCode.RESOURCE_EXHAUSTED and self.retry_after is not None
        )

    @property
    def origin(self) -> str | None:
        """The agent whose failure this is, when the error came from one."""
        return self.metadata.get(ORIGIN)

    def __str__(self) -> str:
        return self.message


class InvalidEnvelope(KosmosError):
    """The envelope breaks a rule; ``field`` names the field at fault."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ENVELOPE"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, metadata={"field": field})

    @property
    def field(self) -> str:
        """The envelope field at fault."""
        return self.metadata.get("field", "")


class NotFound(KosmosError):
    """What the call names does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AgentNotFound(NotFound):
    """The mesh knows no agent of that name."""

    reason = "AGENT_NOT_FOUND"


class PermissionDenied(KosmosError):
    """The caller may not do what it asked (a write to a read-only database, say)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class ActionNotFound(KosmosError):
    """The agent has no action of that name."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "ACTION_NOT_FOUND"


class WrongCallKind(KosmosError):
    """A streaming action was called through Execute."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "WRONG_CALL_KIND"


class ConfigError(KosmosError):
    """The mesh config is missing or wrong."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "CONFIG_INVALID"


class DelegationLoop(KosmosError):
    """A delegation chain is deeper than the mesh allows (``[mesh] max_hops``): refused, not run,
    so that agents delegating to each other (or to themselves) cannot hold every slot waiting."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "DELEGATION_LOOP"


class DuplicateMessage(KosmosError):
    """A call already ran under this message_id and cannot be answered again, nor run again: a
    stream (its chunks are not kept), or a call whose reply was too large to keep."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "DUPLICATE_MESSAGE"


class DeadlineExceeded(KosmosError, TimeoutError):
    """The call's deadline or the envelope's TTL ran out."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class AgentUnavailable(KosmosError):
    """The agent could not be reached."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "AGENT_UNAVAILABLE"


class CircuitOpen(AgentUnavailable):
    """The circuit to the agent is open: the call failed at once, nothing was sent; ``retry_after``
    says when the breaker will let a probe through, and retrying sooner cannot help."""

    reason = "CIRCUIT_OPEN"

    @property
    def retryable(self) -> bool:
        return False


class DependencyUnavailable(KosmosError):
    """Something the mesh needs (the NATS server, the embedded broker) cannot be reached; the message
    is one line for the user: what is down, at which address, why, and what to do."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "DEPENDENCY_UNAVAILABLE"


class ResourceExhausted(KosmosError):
    """The agent is overloaded or a limit was hit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class PayloadTooLarge(ResourceExhausted):
    """The payload is over the configured size limit."""

    reason = "PAYLOAD_TOO_LARGE"


class SlowConsumer(ResourceExhausted):
    """A client read nothing of its stream for too long, and the stream was ended to free what it held."""

    reason = "SLOW_CONSUMER"


class Cancelled(KosmosError):
    """The call was cancelled by its caller."""

    code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class StreamBroken(KosmosError):
    """A stream ended without its final marker."""

    code = grpc.StatusCode.DATA_LOSS
    reason = "STREAM_BROKEN"


class ActionFailed(KosmosError):
    """The action's handler raised an unexpected exception."""

    reason = "ACTION_FAILED"


class SagaFailed(KosmosError):
    """A saga step failed; the steps completed before it were compensated, as far as possible.

    ``code`` is the failing step's (ABORTED when it is not known). ``compensation_failures``
    holds the steps that could not be undone (after retries): when it is not empty, the saga has
    left state behind. The steps and responses are those of :mod:`kosmos_grpc.patterns`; an error
    rebuilt from the wire keeps only its message, code and metadata (``saga_id``, ``step``).
    """

    code = grpc.StatusCode.ABORTED
    reason = "SAGA_FAILED"
    fixed_code = False

    def __init__(
        self,
        message: str,
        *,
        metadata: dict[str, str] | None = None,
        retry_after: float | None = None,
        cause: KosmosError | None = None,
        step: Any = None,
        responses: list[Any] | None = None,
        compensated: list[Any] | None = None,
        compensation_failures: dict[Any, KosmosError] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata, retry_after=retry_after)
        if cause is not None:
            self.code = cause.code
            if cause.origin:  # the failing agent stays named: a caller must not blame (or retry) the saga's runner
                self.metadata.setdefault(ORIGIN, cause.origin)
        self.cause = cause
        #: The step that failed (a ``SagaStep``), None when rebuilt from the wire.
        self.step = step
        #: The responses of the steps that completed before the failure, in order.
        self.responses: list[Any] = responses or []
        #: The steps compensated, in the order they were (the reverse of the saga's).
        self.compensated: list[Any] = compensated or []
        self.compensation_failures: dict[Any, KosmosError] = compensation_failures or {}

    @property
    def saga_id(self) -> str:
        """The saga's id."""
        return self.metadata.get("saga_id", "")

    @property
    def retryable(self) -> bool:
        """A saga left half undone must not simply be run again."""
        return not self.compensation_failures and super().retryable


_BY_REASON: dict[str, type[KosmosError]] = {
    cls.reason: cls
    for cls in (
        KosmosError, InvalidEnvelope, NotFound, AgentNotFound, PermissionDenied, ActionNotFound, WrongCallKind,
        ConfigError, DelegationLoop, DuplicateMessage, DeadlineExceeded, AgentUnavailable, CircuitOpen,
        DependencyUnavailable, ResourceExhausted, PayloadTooLarge, SlowConsumer, Cancelled, StreamBroken,
        ActionFailed, SagaFailed,
    )
}  # fmt: skip
_BY_CODE: dict[grpc.StatusCode, type[KosmosError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidEnvelope,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNIMPLEMENTED: ActionNotFound,
    grpc.StatusCode.FAILED_PRECONDITION: WrongCallKind,
    grpc.StatusCode.ALREADY_EXISTS: DuplicateMessage,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: AgentUnavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.DATA_LOSS: StreamBroken,
}


def is_final(error: KosmosError) -> bool:
    """Whether a call that ended in ``error`` finished for good: an agent keeps such an outcome
    for its message_id. The rest (retryable, unavailable, an open circuit, past a deadline,
    cancelled) did not finish, so their outcome is unknown and a retry under the same
    message_id runs them."""
    return not (error.retryable or error.code in _UNFINISHED)


# The statuses of a call whose outcome is unknown: it may not have run, or not to its end.
_UNFINISHED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})


def to_status(error: KosmosError) -> grpc.Status:
    """The rich gRPC status an error travels as: its message and metadata clipped (:mod:`~kosmos_grpc.quoting`),
    so that its trailers fit gRPC's limit whatever the error echoes."""
    details = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=clip_metadata(error.metadata)))
    details.append(info)
    if error.retry_after is not None:
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=error.code.value[0], message=clip(error.message), details=details)
    )
    return status


def _make(
    cls: type[KosmosError],
    code: grpc.StatusCode,
    message: str,
    metadata: dict[str, str],
    retry_after: float | None,
) -> KosmosError:
    if cls is InvalidEnvelope:
        error: KosmosError = InvalidEnvelope(metadata.get("field", ""), message)
        error.metadata.update(metadata)  # the origin too, so the agent that passed it on is not blamed
        return error
    error = cls(message, metadata=metadata, retry_after=retry_after)
    error.code = code  # a status the hierarchy has no class for keeps its own code
    return error


def from_rpc_error(error: grpc.aio.AioRpcError | grpc.RpcError) -> KosmosError:
    """Rebuild the mesh error a failed call carries, from its rich status where it has one."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    message = (error.details() if callable(getattr(error, "details", None)) else None) or code.name
    cls: type[KosmosError] = _BY_CODE.get(code, KosmosError)
    metadata: dict[str, str] = {}
    retry_after: float | None = None
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a status whose details disagree with the code or message
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            metadata = dict(info.metadata)
            named = _BY_REASON.get(info.reason, cls) if info.domain == DOMAIN else cls
            if not named.fixed_code or named.code == code:
                cls = named
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    return _make(cls, code, message, metadata, retry_after)
