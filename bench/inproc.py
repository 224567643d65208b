"""Run a fleetshard command in this process and report the time it took after start-up.

    python bench/inproc.py run -i machines.yaml ...

The heavy modules (asyncssh, rich, the runner) are imported first, so the figure printed on stderr as
the last line (``{"inproc": seconds}``) is the command itself without interpreter start-up and imports.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import asyncssh  # noqa: F401
    import rich.console  # noqa: F401

    import fleetshard.health
    import fleetshard.history
    import fleetshard.progress
    import fleetshard.runner  # noqa: F401
    from fleetshard.cli import app

    start = time.perf_counter()
    code = 0
    try:
        rv = app(sys.argv[1:], standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    except Exception as exc:  # typer.Exit in non-standalone mode
        code = int(getattr(exc, "exit_code", 1))
    elapsed = time.perf_counter() - start
    sys.stdout.flush()
    print(json.dumps({"inproc": elapsed, "code": code}), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
