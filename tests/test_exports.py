"""The public API: one sorted, complete ``__all__``."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import kosmos_grpc


def test_all_is_sorted_and_every_name_resolves() -> None:
    def isort_style(name: str) -> tuple[int, str]:  # ruff's RUF022 order: CONSTANTS, Classes, functions
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert kosmos_grpc.__all__ == sorted(kosmos_grpc.__all__, key=isort_style)
    for name in kosmos_grpc.__all__:
        assert hasattr(kosmos_grpc, name), name


PUBLIC = [
    "AGENT_SERVICE",
    "DEFAULT_PAYLOAD_LIMIT",
    "DEFAULT_TTL_MS",
    "ActionFailed",
    "ActionInfo",
    "ActionNotFound",
    "ActionSpec",
    "Agent",
    "AgentCard",
    "AgentConfig",
    "AgentHost",
    "AgentMessage",
    "AgentNotFound",
    "AgentServer",
    "AgentUnavailable",
    "BreakerPolicy",
    "BusConfig",
    "Call",
    "CallScope",
    "Cancelled",
    "Chunk",
    "CircuitBreaker",
    "CircuitInfo",
    "CircuitOpen",
    "CircuitState",
    "ConfigError",
    "Context",
    "Coordinator",
    "DeadlineExceeded",
    "Delegation",
    "DelegationLoop",
    "DependencyUnavailable",
    "DuplicateMessage",
    "Envelope",
    "Idempotency",
    "InboundInterceptor",
    "InterceptorsConfig",
    "InvalidEnvelope",
    "KosmosError",
    "MeshConfig",
    "MeshLimits",
    "NotFound",
    "OpenStream",
    "OutboundInterceptor",
    "PayloadTooLarge",
    "PermissionDenied",
    "Priority",
    "Registry",
    "Replies",
    "Resilience",
    "ResiliencePolicy",
    "ResourceExhausted",
    "Response",
    "RetryPolicy",
    "Saga",
    "SagaFailed",
    "SagaResult",
    "SagaStep",
    "ScatterResult",
    "ScopedClient",
    "ServedCall",
    "ServerSettings",
    "SlowConsumer",
    "Step",
    "StreamBroken",
    "TelemetryConfig",
    "WrongCallKind",
    "action",
    "configure_logging",
    "configure_tracing",
    "from_rpc_error",
    "import_object",
    "load_agent",
    "load_config",
    "new_message",
    "parallel",
    "scatter_gather",
    "sequential",
    "serve_forever",
    "validate_and_fill",
]


def test_the_public_api_is_exactly_this() -> None:
    assert kosmos_grpc.__all__ == PUBLIC


def test_every_public_error_is_exported() -> None:
    from kosmos_grpc import errors

    public = {n for n in errors.__all__ if n[0].isupper() and isinstance(getattr(errors, n), type)}
    assert public <= set(kosmos_grpc.__all__)


def test_each_name_is_imported_on_first_use_from_the_module_the_type_checker_sees() -> None:
    """The lazy table and the TYPE_CHECKING imports name the same module for every public name."""
    tree = ast.parse(Path(kosmos_grpc.__file__).read_text())
    (block,) = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    seen = {alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert seen == kosmos_grpc._EXPORTS
    assert set(kosmos_grpc._EXPORTS) == set(kosmos_grpc.__all__)
    for name, module in kosmos_grpc._EXPORTS.items():
        assert getattr(kosmos_grpc, name) is getattr(importlib.import_module(module), name)
    assert set(kosmos_grpc.__all__) <= set(dir(kosmos_grpc))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Coordinater'"):
        _ = kosmos_grpc.Coordinater  # type: ignore[attr-defined]


def test_importing_the_package_imports_none_of_its_modules() -> None:
    code = "import sys, kosmos_grpc; print(sorted(m for m in sys.modules if m.startswith(('kosmos_grpc.', 'grpc'))))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "['kosmos_grpc._lazy']", "only the lazy-names helper, which imports nothing more"
