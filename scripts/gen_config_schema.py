"""Write kosmos.schema.json, the JSON Schema of kosmos.toml, from kosmos_grpc/config_schema.py, or check it is current.

The loader and the schema read one description of the config's tables and keys; this keeps the
published file in step with it (``make schema``; ``make schema-check`` in ``make test``). Run it as
``python -m scripts.gen_config_schema``, so that the package it reads is the one beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kosmos_grpc.config_schema import schema_text

SCHEMA = Path(__file__).resolve().parent.parent / "kosmos.schema.json"


def main() -> int:
    """Write the schema, or with ``--check`` exit 1 when the committed one differs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when kosmos.schema.json is stale")
    text = schema_text()
    if parser.parse_args().check:
        if not SCHEMA.exists() or SCHEMA.read_text() != text:
            print(f"{SCHEMA.name} is stale: run 'make schema' and commit it", file=sys.stderr)
            return 1
        print(f"{SCHEMA.name} is current")
        return 0
    SCHEMA.write_text(text)
    print(f"wrote {SCHEMA.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
