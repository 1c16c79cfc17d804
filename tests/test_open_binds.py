"""`kosmos up`, `serve` and `broker` refuse to listen beyond loopback in the clear unless told --insecure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kosmos_grpc import load_config

from .conftest import environment


def _config(tmp_path: Path, agent: str, bus: str = "127.0.0.1:0") -> Path:
    path = tmp_path / "kosmos.toml"
    path.write_text(
        f'[bus]\naddress = "{bus}"\n'
        f'[agents.athena]\nobject = "tests.helpers.toys:Athena"\naddress = "{agent}"\n'
        '[agents.zeus]\nobject = "agents.zeus:Zeus"\naddress = "127.0.0.1:0"\n'
    )
    return path


@pytest.mark.parametrize(
    ("address", "beyond"),
    [
        ("127.0.0.1:0", False),
        ("127.8.9.1:0", False),
        ("localhost:0", False),
        ("[::1]:0", False),
        ("0.0.0.0:50052", True),
        ("[::]:50052", True),
        ("198.18.0.1:50052", True),
        ("mesh.example.org:50052", True),
    ],
)
def test_only_loopback_addresses_stay_on_this_machine(tmp_path: Path, address: str, beyond: bool) -> None:
    config = load_config(_config(tmp_path, address))
    assert config.open_addresses(["athena", "zeus"]) == ({"athena": address} if beyond else {})


def _kosmos(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kosmos_grpc.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment({}),
    )


@pytest.mark.parametrize(
    ("agent", "bus", "command", "who"),
    [
        ("0.0.0.0:0", "127.0.0.1:0", ("serve", "athena"), "agent 'athena' would listen on 0.0.0.0:0"),
        ("0.0.0.0:0", "127.0.0.1:0", ("up",), "agent 'athena' would listen on 0.0.0.0:0"),
        ("127.0.0.1:0", "0.0.0.0:0", ("broker",), "the event broker would listen on 0.0.0.0:0"),
        ("127.0.0.1:0", "0.0.0.0:0", ("up",), "the event broker would listen on 0.0.0.0:0"),
    ],
)
def test_serving_beyond_loopback_in_the_clear_is_refused_in_one_line(
    tmp_path: Path, agent: str, bus: str, command: tuple[str, ...], who: str
) -> None:
    refused = _kosmos(_config(tmp_path, agent, bus), *command)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(f"kosmos: {who}, beyond this machine, with no TLS or authentication")
    assert refused.stderr.rstrip().endswith("pass --insecure to serve it so anyway")
    assert refused.stdout == "", "nothing was started"


def test_insecure_is_an_option_of_the_commands_that_serve() -> None:
    from kosmos_grpc.commandline import parse

    assert parse(["up", "--insecure"]).insecure
    assert parse(["serve", "athena", "--insecure"]).insecure
    assert parse(["broker", "--insecure"]).insecure
    assert not parse(["up"]).insecure
