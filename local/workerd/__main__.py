"""`make dev`: the service in real workerd through `wrangler dev`, offline, on 127.0.0.1:8787.

Secrets come from `.dev.vars` (created with random values on first run, as `make serve` does);
storage lives under `.wrangler/state` (D1 with migrations/ applied, R2, each room's SQLite).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from roomsd.config import ensure_dev_secret, read_dev_vars
from workerd.wrangler import (
    PROJECT_ROOT,
    Toolchain,
    WorkerdNotInstalledError,
    apply_migrations,
    dev_args,
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="make dev", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--persist-to", type=Path, default=PROJECT_ROOT / ".wrangler" / "state")
    args = parser.parse_args()
    try:
        tools = Toolchain.installed()
    except WorkerdNotInstalledError as exc:
        sys.exit(f"make dev: {exc}")
    dev_vars = PROJECT_ROOT / ".dev.vars"
    ensure_dev_secret(dev_vars)
    ensure_dev_secret(dev_vars, "ADMIN_TOKEN")
    # The chat page signs in with guest tokens; on by default here as in `make serve`, unless
    # .dev.vars says otherwise.
    variables = {} if "GUEST_TOKENS" in read_dev_vars(dev_vars) else {"GUEST_TOKENS": "1"}
    apply_migrations(tools, args.persist_to)
    command = tools.wrangler_command(*dev_args(args.port, args.persist_to, variables=variables))
    print(
        f"make dev: http://127.0.0.1:{args.port}/ (real workerd; first request takes ~4 s)",
        flush=True,
    )
    os.chdir(PROJECT_ROOT)
    os.execve(command[0], command, tools.env())


if __name__ == "__main__":
    main()
