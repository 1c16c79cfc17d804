"""Shell completion for ``kosmos``: static bash and zsh scripts written by shtab from the grammar.

Static, so pressing Tab runs no Python: the commands and options are in the script, and agent
names are read from the config (``$KOSMOS_CONFIG``, else ``./kosmos.toml``) by ``sed``.
"""

from __future__ import annotations

from kosmos_grpc.commandline import parser

__all__ = ["SHELLS", "script"]

# The [agents.<name>] table names of a config; [agents.<name>.retry] and the like are left out.
_AGENT_NAMES = (
    r"""sed -n 's/^[[:space:]]*\[agents\.\([A-Za-z0-9_-]*\)\].*/\1/p' "${KOSMOS_CONFIG:-kosmos.toml}" 2>/dev/null"""
)

# Each shell's completion function for an agent argument (commandline.AGENT_COMPLETION names it).
SHELLS = {
    "bash": f"""_kosmos_agents() {{
  compgen -W "$({_AGENT_NAMES})" -- "$1"
}}""",
    "zsh": f"""_kosmos_agents() {{
  local -a agents
  agents=(${{(f)"$({_AGENT_NAMES})"}})
  compadd -a agents
}}""",
}


def script(shell: str) -> str:
    """The completion script for ``shell`` (``bash`` or ``zsh``)."""
    import shtab  # only here: 40 ms that no other command needs

    return str(shtab.complete(parser(), shell=shell, preamble=SHELLS[shell]))
