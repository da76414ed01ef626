"""``python -m bench.profile_inbound [inbound options]``: the inbound part on other RTP ports.

The same as ``python -m bench inbound`` but callctl takes its RTP ports from
``CALLCTL_BENCH_RTP_LOW`` (default 30000) instead of 20000, so that it can run beside
another benchmark run (whose callctl holds 20000 and up) while profiling a change. Figures
taken while another run shares the CPUs are only good for comparing A with B back to back.
"""

from __future__ import annotations

import os
import sys

from bench import harness, inbound


def main(argv: list[str] | None = None) -> int:
    harness.RTP_LOW = int(os.environ.get("CALLCTL_BENCH_RTP_LOW", "30000"))
    result = inbound.main(argv if argv is not None else sys.argv[1:])
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
