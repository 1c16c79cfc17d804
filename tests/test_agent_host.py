"""What the serving process gives an agent: its checked settings, its own folder, and on_ready before SERVING."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from kosmos_grpc import Agent, AgentServer, ConfigError, Context, action, load_config


class Tuned(Agent):
    """An agent with settings of its own."""

    name = "tuned"
    settings_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"depth": {"type": "integer", "minimum": 1, "default": 3}, "url": {"type": "string"}},
    }

    def __init__(self) -> None:
        self.order: list[str] = []

    async def on_start(self) -> None:
        self.order.append("start")

    async def on_ready(self) -> None:
        self.order.append(f"ready with state in {self.host.state_dir.name}, made: {self.host.state_dir.is_dir()}")

    @action
    async def depth(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
        """The depth its settings give."""
        return {"depth": self.host.settings["depth"]}


class Plain(Agent):
    name = "plain"


def test_settings_are_checked_and_their_defaults_filled() -> None:
    assert Tuned.checked_settings({}) == {"depth": 3}
    assert Tuned.checked_settings({"depth": 5, "url": "http://x"}) == {"depth": 5, "url": "http://x"}
    with pytest.raises(ConfigError, match=r"^agents\.tuned\.settings\.depth: must be bigger than or equal to 1"):
        Tuned.checked_settings({"depth": 0})
    with pytest.raises(ConfigError, match=r"agents\.tuned\.settings: must not contain \{'dpth'\}") as typo:
        Tuned.checked_settings({"dpth": 5})
    assert typo.value.message.endswith("; did you mean 'depth'?")
    with pytest.raises(ConfigError, match=r"agent 'plain' takes no settings, not depth"):
        Plain.checked_settings({"depth": 5})


async def test_the_host_gives_settings_and_a_made_folder_before_serving(tmp_path: Path) -> None:
    agent = Tuned()
    async with AgentServer(agent, agent_settings={"depth": 7}, state_dir=tmp_path / "tuned") as server:
        assert agent.order == ["start", "ready with state in tuned, made: True"]
        assert await server.coordinator.health("tuned") == "SERVING"
        response = await server.coordinator.delegate("tuned", "depth", {})
        assert response.result == {"depth": 7}


def test_an_agent_is_not_hosted_until_a_server_takes_it() -> None:
    with pytest.raises(ConfigError, match="not served yet"):
        _ = Tuned().host


def test_config_settings_tables_and_state_dir(tmp_path: Path) -> None:
    path = tmp_path / "kosmos.toml"
    path.write_text(
        '[mesh]\nstate_dir = "var/kosmos"\n'
        '[agents.tuned]\nobject = "x:Tuned"\naddress = "127.0.0.1:0"\n'
        '[agents.tuned.settings]\ndepth = 4\nanything = "the agent checks it"\n'
    )
    config = load_config(path)
    assert config.agent("tuned").settings == {"depth": 4, "anything": "the agent checks it"}
    assert config.agent_state_dir("tuned") == Path("var/kosmos/tuned").absolute()
    path.write_text('[agents.tuned]\nobject = "x:Tuned"\naddress = "127.0.0.1:0"\ndepth = 4\n')
    with pytest.raises(
        ConfigError, match=r"unknown key 'depth' in \[agents\.tuned\].*go in \[agents\.tuned\.settings\]"
    ):
        load_config(path)
    path.write_text('[agents.tuned]\nobject = "x:Tuned"\naddress = "127.0.0.1:0"\n')
    assert load_config(path).agent_state_dir("tuned") == Path(".kosmos/tuned").absolute()
