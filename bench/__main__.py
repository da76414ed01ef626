"""Benchmark runner: ``python -m bench <name> [args...]``.

Each sub-command is a module of this package with a ``main(argv) -> int`` function;
add one by adding it to ``COMMANDS``.
"""

from __future__ import annotations

import importlib
import sys

# sub-command -> module (relative to this package) providing main(argv: list[str]) -> int
COMMANDS: dict[str, str] = {
    "parser": "bench.parser",
    "webhooks": "bench.webhooks",
    "limit": "bench.limit",
    "inbound": "bench.inbound",
    "outbound": "bench.outbound",
    "concurrency": "bench.concurrency",
    "all": "bench.all",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        names = ", ".join(sorted(COMMANDS))
        print(f"usage: python -m bench <{names}> [--help]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    result: int = module.main(argv[1:])
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
