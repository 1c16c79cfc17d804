"""The `kosmos` command line: options anywhere, help with examples, one-line mistakes, shell completion."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kosmos_grpc.commandline import COMMANDS, LOG_FORMATS, parse
from kosmos_grpc.completion import script
from kosmos_grpc.telemetry import logs

from .conftest import ROOT, environment, tool


def test_a_commands_options_may_come_between_and_after_its_positionals() -> None:
    args = parse(["call", "athena", "answer", "--timeout-ms", "500", '{"topic": "grpc"}', "--pretty"])
    assert (args.agent, args.action, args.payload) == ("athena", "answer", '{"topic": "grpc"}')
    assert (args.timeout_ms, args.pretty) == (500, True)
    stream = parse(["stream", "athena", "--priority", "high", "explain", "{}"])
    assert (stream.agent, stream.action, stream.payload, stream.priority.name) == ("athena", "explain", "{}", "HIGH")


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "k.toml", "-v", "--log-format", "json", "call", "athena", "answer", "{}"],
        ["call", "athena", "answer", "{}", "--config", "k.toml", "-v", "--log-format", "json"],
        ["call", "--config", "k.toml", "athena", "-v", "answer", "--log-format", "json", "{}"],
        ["-v", "call", "athena", "answer", "{}", "--log-format", "json", "--config", "k.toml"],
    ],
)
def test_the_global_options_go_before_or_after_the_command(argv: list[str]) -> None:
    args = parse(argv)
    assert (args.config, args.verbose, args.log_format, args.payload) == ("k.toml", True, "json", "{}")


def test_a_global_option_before_the_command_is_kept_when_not_repeated_after_it() -> None:
    assert parse(["--config", "a.toml", "health", "--timeout-ms", "5"]).config == "a.toml"
    assert parse(["--config", "a.toml", "health", "--config", "b.toml"]).config == "b.toml"
    assert parse(["health"]).config is None


def test_the_defaults_stand_when_no_option_is_given() -> None:
    args = parse(["call", "athena", "answer"])
    assert (args.payload, args.timeout_ms, args.priority.name, args.verbose, args.log_format) == (
        None,
        30_000,
        "NORMAL",
        False,
        None,
    )


@pytest.mark.parametrize("command", [*COMMANDS, "config check"])
def test_every_commands_help_shows_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse([*command.split(), "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert f"\nexamples:\n  kosmos {command.split()[0]}" in help_text
    assert "global options:" in help_text, "--config and the others are shown where they are accepted"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["call", "athena", "answer", "{}", "extra"],
            "kosmos: unrecognized arguments: extra (see 'kosmos call --help')",
        ),
        (
            ["health", "--timeout-ms", "soon"],
            "kosmos: argument --timeout-ms: 'soon' is not a number of milliseconds (see 'kosmos health --help')",
        ),
        (
            ["stream", "athena", "explain", "--priority", "urgent"],
            "kosmos: argument --priority: priority 'urgent' is not one of low, normal, high, critical"
            " (see 'kosmos stream --help')",
        ),
        (["config"], "kosmos: the following arguments are required: ACTION (see 'kosmos config --help')"),
        (["completion", "fish"], "kosmos: argument shell: invalid choice: 'fish' (choose from 'bash', 'zsh')"),
        ([], "kosmos: the following arguments are required: COMMAND (see 'kosmos --help')"),
    ],
)
def test_a_mistake_is_one_line_naming_the_help_to_read(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(line)
    assert capsys.readouterr().err.count("\n") <= 1


def test_the_log_formats_are_the_loggers() -> None:
    assert LOG_FORMATS == logs.LOG_FORMATS


def _complete(words: list[str], config: Path) -> list[str]:
    """What bash offers for ``words`` (the last one being completed), the script sourced in a real bash."""
    driver = (
        'source /dev/stdin; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE};'
        ' _shtab_kosmos; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "-c", driver, "bash", *words],
        input=script("bash"),
        cwd=config.parent,
        env=environment({"KOSMOS_CONFIG": str(config)}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return sorted(filter(None, done.stdout.splitlines()))


def test_bash_completes_commands_options_and_the_configs_agent_names(tmp_path: Path) -> None:
    config = tmp_path / "mesh.toml"
    config.write_text('[agents.zeus]\nobject = "a:B"\n\n[agents.athena]\nobject = "a:B"\n\n[agents.athena.retry]\n')
    assert _complete(["kosmos", "ca"], config) == ["call"]
    assert _complete(["kosmos", "call", ""], config) == ["athena", "zeus"]
    assert _complete(["kosmos", "--config", "x.toml", "health", "at"], config) == ["athena"]
    assert _complete(["kosmos", "call", "athena", "answer", "--ti"], config) == ["--timeout-ms"]
    assert _complete(["kosmos", "completion", ""], config) == ["bash", "zsh"]


def test_completion_prints_a_script_each_shell_accepts(tmp_path: Path) -> None:
    for shell in ("bash", "zsh"):
        done = subprocess.run(
            [tool("kosmos"), "completion", shell], cwd=ROOT, env=environment({}), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert "_kosmos_agents()" in done.stdout
        path = tmp_path / f"kosmos.{shell}"
        path.write_text(done.stdout)
        if shutil.which(shell) is None:  # zsh is not on every machine; bash is
            assert shell != "bash"
            continue
        checked = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
