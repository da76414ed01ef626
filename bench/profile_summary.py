"""Print where callctl's CPU went, from py-spy raw (collapsed-stack) files.

``python -m bench.profile_summary FILE...`` prints the top functions by self and by
inclusive share of samples and the share per source file (the same summary
``--profile`` puts into the results JSON, via ``bench.harness.profile_summary``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.harness import profile_summary


def main(argv: list[str] | None = None) -> int:
    paths = [Path(arg) for arg in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        print("usage: python -m bench.profile_summary FILE...", file=sys.stderr)
        return 2
    print(json.dumps(profile_summary(paths, top=25), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
