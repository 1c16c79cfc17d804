"""Agent name -> address: where the mesh's agents listen."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from kosmos_grpc.errors import AgentNotFound
from kosmos_grpc.quoting import echo

__all__ = ["Registry"]


class Registry(Mapping[str, str]):
    """A mutable map of agent names to ``host:port`` addresses."""

    def __init__(self, addresses: Mapping[str, str] | None = None) -> None:
        self._addresses: dict[str, str] = dict(addresses or {})

    def __getitem__(self, name: str) -> str:
        return self._addresses[name]

    def address(self, name: str) -> str:
        """Where ``name`` listens; AgentNotFound naming the known agents when the mesh has no such agent."""
        try:
            return self._addresses[name]
        except KeyError:
            known = ", ".join(sorted(self._addresses)) or "none"
            raise AgentNotFound(
                f"no agent named {echo(name)} in the mesh (agents: {known})", metadata={"agent": echo(name)}
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._addresses)

    def __len__(self) -> int:
        return len(self._addresses)

    def __contains__(self, name: object) -> bool:
        return name in self._addresses

    def set(self, name: str, address: str) -> None:
        """Add an agent or move it to a new address."""
        self._addresses[name] = address

    def update_from(self, addresses: Mapping[str, str]) -> None:
        """Add or move several agents at once."""
        self._addresses.update(addresses)
