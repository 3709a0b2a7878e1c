"""``make bench``: every benchmark in one run, each appended to bench/RESULTS.md."""

from __future__ import annotations

import asyncio
import sys

from bench import ask_rtt, e2e, many


async def main() -> None:
    print("operator_server benchmarks (progress on stderr; results also in bench/RESULTS.md)")
    await ask_rtt.run()
    await e2e.run()
    await many.run()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
