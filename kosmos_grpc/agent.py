"""The Agent base class, the ``@action`` decorator, and loading an agent named ``module:Class``."""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, overload

from kosmos_grpc.config_check import suggest
from kosmos_grpc.errors import ConfigError, InvalidEnvelope
from kosmos_grpc.schemas import compile_payload_check

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from kosmos_grpc.bus.protocol import EventBus
    from kosmos_grpc.client import Coordinator
    from kosmos_grpc.registry import Registry

__all__ = ["ActionSpec", "Agent", "AgentHost", "action", "import_object", "load_agent"]

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


@dataclass(slots=True)
class AgentHost:
    """What the process serving an agent gives it beyond its calls: its settings, its folder, the mesh.

    The registry and ``metrics`` follow the mesh as ``kosmos up`` hands its addresses over; ``bus``
    is set once the event bus is open (before ``on_ready`` runs).
    """

    #: ``[agents.<name>.settings]``, checked against the class's ``settings_schema``, its defaults filled.
    settings: dict[str, Any]
    #: The agent's own folder for what it keeps (made before ``on_start``).
    state_dir: Path
    #: Where every agent of the mesh listens.
    registry: Registry
    #: A client for calls made outside any handler (``on_start``'s background work, say).
    client: Coordinator
    #: Agent name -> its ``/metrics`` URL, for the agents that serve one.
    metrics: dict[str, str] = field(default_factory=dict)
    bus: EventBus | None = None


class Agent:
    """Base class of every agent: subclass it, set ``name``, and mark methods with ``@action``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "0.1.0"
    actions: ClassVar[dict[str, ActionSpec]] = {}
    #: The JSON Schema of ``[agents.<name>.settings]`` (None: the agent takes none).
    settings_schema: ClassVar[Mapping[str, Any] | None] = None
    _host: AgentHost | None = None

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

    @property
    def host(self) -> AgentHost:
        """What the serving process gives this agent (ConfigError before a server hosts it)."""
        if self._host is None:
            raise ConfigError(f"agent {self.name!r} is not served yet: its host is given by the AgentServer")
        return self._host

    def hosted_by(self, host: AgentHost) -> None:
        """Take ``host`` (the AgentServer calls this when made)."""
        self._host = host

    @classmethod
    def checked_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """``settings`` checked against ``settings_schema`` with its defaults filled; ConfigError naming the key."""
        where = f"agents.{cls.name}.settings"
        schema = cls.settings_schema
        if schema is None:
            if settings:
                raise ConfigError(f"[{where}]: agent {cls.name!r} takes no settings, not {', '.join(settings)}")
            return {}
        values = dict(settings)
        try:
            compile_payload_check({"additionalProperties": False, **schema}, where, root=where)(values)
        except InvalidEnvelope as exc:
            known = list(schema.get("properties", {}))
            unknown = [key for key in values if key not in known]
            hint = suggest(unknown[0], known) if unknown and exc.field == where else ""
            raise ConfigError(exc.message + hint) from None
        except TypeError as exc:
            raise ConfigError(str(exc)) from None
        return values

    async def on_start(self) -> None:
        """Called once the server is bound, before the mesh's addresses are known (its slow set-up,
        in parallel with the other agents')."""

    async def on_ready(self) -> None:
        """Called once the mesh's addresses are known and the bus is open, before it reports SERVING."""

    async def on_stop(self) -> None:
        """Called after the server has drained its calls."""


def import_object(spec: str, search_path: Path | None = None, *, form: str = "module:name") -> Any:
    """What ``module:name`` names; the config's folder (``search_path``) and cwd are importable."""
    for folder in (search_path, Path.cwd()):
        if folder is not None and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"object {spec!r} should be {form!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load {spec!r}: {exc}") from None


def load_agent(spec: str, search_path: Path | None = None) -> Agent:
    """Import ``module:Class`` and instantiate it; the config's folder and cwd are importable."""
    target = import_object(spec, search_path, form="module:Class")
    agent = target() if isinstance(target, type) else target
    if not isinstance(agent, Agent):
        raise ConfigError(f"{spec!r} is not a kosmos_grpc.Agent")
    return agent
