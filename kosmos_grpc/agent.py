"""The Agent base class, the ``@action`` decorator and the context a handler runs with."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, overload

from kosmos_grpc.client import CallScope, Coordinator, ScopedClient
from kosmos_grpc.config import ConfigError
from kosmos_grpc.envelope import Priority, struct_to_dict

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from kosmos_grpc._proto.kosmos.v1 import envelope_pb2
    from kosmos_grpc.bus.protocol import EventBus

__all__ = ["ActionSpec", "Agent", "Context", "action"]

JSON: TypeAlias = dict[str, Any]
_MARK = "__kosmos_action__"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One action of an agent: its handler and what its card says of it."""

    name: str
    attr: str
    description: str
    streaming: bool
    input_schema: Mapping[str, Any] | None = None


@overload
def action(func: Callable[..., Any], /) -> Callable[..., Any]: ...
@overload
def action(
    *, name: str | None = None, description: str | None = None, schema: Mapping[str, Any] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...
def action(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    schema: Mapping[str, Any] | None = None,
) -> Any:
    """Register an agent method as an action.

    ``async def f(self, ctx, payload) -> dict`` is unary; an async generator yielding dicts
    streams. The name defaults to the method's, the description to its docstring's first line.
    """

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        streaming = inspect.isasyncgenfunction(f)
        if not streaming and not inspect.iscoroutinefunction(f):
            raise TypeError(f"action {f.__qualname__} must be an async function or async generator")
        doc = (inspect.getdoc(f) or "").strip().splitlines()
        spec = ActionSpec(
            name=name or f.__name__,
            attr=f.__name__,
            description=description if description is not None else (doc[0] if doc else ""),
            streaming=streaming,
            input_schema=schema,
        )
        setattr(f, _MARK, spec)
        return f

    return mark(func) if func is not None else mark


class Agent:
    """Base class of every agent: subclass it, set ``name``, and mark methods with ``@action``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "0.1.0"
    actions: ClassVar[dict[str, ActionSpec]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, ActionSpec] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                spec = getattr(value, _MARK, None)
                if isinstance(spec, ActionSpec):
                    found[spec.name] = spec
        cls.actions = found
        if not cls.description:
            doc = (inspect.getdoc(cls) or "").strip().splitlines()
            cls.description = doc[0] if doc else ""

    async def on_start(self) -> None:
        """Called once the server is bound, before it reports SERVING."""

    async def on_stop(self) -> None:
        """Called after the server has drained its calls."""


class Context:
    """What a handler knows of the call it serves: the envelope, the deadline, a client to delegate."""

    __slots__ = ("_bus", "_client", "_coordinator", "_payload", "agent_name", "deadline", "message")

    def __init__(
        self,
        message: envelope_pb2.AgentMessage,
        agent_name: str,
        deadline: float | None,
        coordinator: Coordinator,
        bus: EventBus | None = None,
    ) -> None:
        self.message = message
        self._bus = bus
        self.agent_name = agent_name
        #: When the call must be answered, on the ``time.monotonic`` clock.
        self.deadline = deadline
        self._coordinator = coordinator
        self._client: ScopedClient | None = None
        self._payload: JSON | None = None

    @property
    def payload(self) -> JSON:
        """The envelope's payload as a dict."""
        if self._payload is None:
            self._payload = struct_to_dict(self.message.payload)
        return self._payload

    @property
    def correlation_id(self) -> str:
        """The workflow this call belongs to."""
        return self.message.correlation_id

    @property
    def priority(self) -> Priority:
        """The call's priority (UNSPECIFIED read as NORMAL)."""
        return Priority(self.message.priority) or Priority.NORMAL

    @property
    def bus(self) -> EventBus:
        """The mesh's event bus, to publish and subscribe (ConfigError when the mesh has none)."""
        if self._bus is None:
            raise ConfigError(f"agent {self.agent_name!r} has no event bus: the config names no [bus]")
        return self._bus

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline, or None when the call has none."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def client(self) -> ScopedClient:
        """A client whose calls inherit this call's deadline and correlation_id."""
        if self._client is None:
            scope = CallScope(
                deadline=self.deadline,
                correlation_id=self.message.correlation_id,
                source_agent=self.agent_name,
                trace_id=self.message.trace_id,
            )
            self._client = ScopedClient(self._coordinator, scope)
        return self._client
