"""Re-run the mutant check: each known mistake in src/ must make the Pyodide tier fail.

Issue 15 item 5: these mistakes, injected one at a time into the Cloudflare adapters, once passed
every test. For each mutant this script copies src/ to a temporary directory, applies the mutant
there (the working tree is never touched), runs the Pyodide tier against the copy
(ROOMS_PYODIDE_SRC, see tests/pyodide/README.md) and checks that it fails. The unmutated copy
must pass first, or the check means nothing.

    .venv/bin/python scripts/mutants.py                  # every mutant, tests/pyodide
    .venv/bin/python scripts/mutants.py --only alarm-in-seconds --tests tests/pyodide/test_x.py
    .venv/bin/python scripts/mutants.py --list

A mutant is a set of exact text replacements; when src/ changes so that none of a mutant's
variants applies, the script says so and fails: update the mutant with the code.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
Replacement = tuple[str, str, str]  # (file under src/, old text, new text)


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    variants: tuple[tuple[Replacement, ...], ...]  # the first variant that applies is used


MUTANTS = (
    Mutant(
        "alarm-in-seconds",
        "DurableObjectAlarms.set passes epoch seconds to setAlarm",
        ((("objects/bindings.py", "await self._storage.setAlarm(at_ms)",
           "await self._storage.setAlarm(at_ms // 1000)"),),),
    ),
    Mutant(
        "retry-alarm-in-seconds",
        "Room._retry_alarm sets its retry in epoch seconds",
        ((("objects/room.py", "await storage.setAlarm(int(time.time() * 1000) + retry_ms)",
           "await storage.setAlarm(int(time.time()) + retry_ms // 1000)"),),),
    ),
    Mutant(
        "get-alarm-not-awaited",
        "Room._retry_alarm does not await getAlarm (a coroutine is never None)",
        ((("objects/room.py", "if await storage.getAlarm() is None:",
           "if storage.getAlarm() is None:"),),),
    ),
    Mutant(
        "no-retry-after-failed-alarm",
        "Room.alarm schedules no retry alarm after a failed run",
        ((("objects/room.py",
           'self._failed("alarm", exc)\n            await self._retry_alarm()',
           'self._failed("alarm", exc)'),),),
    ),
    Mutant(
        "no-backoff-after-archive-error",
        "RoomHost.alarm sets no backoff alarm after an archive error (src/rooms)",
        ((("rooms/host.py",
           "await self._set_alarm(now_ms + self.archiver.policy.retry_delay_ms(failures))",
           "pass"),),),
    ),
    Mutant(
        "closing-counts-as-open",
        "HibernatableSockets counts CLOSING sockets as open (`counts_as_open`)",
        ((("objects/platform.py", "return bool(ready_state == ffi.WS_OPEN)",
           "return bool(ready_state in (ffi.WS_OPEN, ffi.WS_CLOSING))"),),),
    ),
    Mutant(
        "cached-database-size",
        "DurableObjectSql.size_bytes reads databaseSize through the SDK's caching wrapper",
        # DurableObjectSql works on the raw binding; read the wrapper's attribute instead. The
        # room hands it the raw storage (an unwrapped ctx), so the mistake needs the SDK's
        # wrapped ctx.storage handed over as well.
        ((("objects/platform.py", "self._sql = self._storage.sql\n",
           "self._sql = self._storage.sql\n        self._wrapped_sql = storage.sql\n"),
          ("objects/platform.py", "return int(self._sql.databaseSize)",
           "return int(self._wrapped_sql.databaseSize)"),
          ("objects/room.py", "self._sql = DurableObjectSql(raw_ctx.storage)",
           "self._sql = DurableObjectSql(self.ctx.storage)")),),
    ),
)


def apply(mutant: Mutant, src: Path) -> None:
    """Apply the first variant of ``mutant`` whose every text occurs exactly once in ``src``."""
    for variant in mutant.variants:
        texts = {path: (src / path).read_text() for path, _, _ in variant}
        if all(texts[path].count(old) == 1 for path, old, _ in variant):
            for path, old, new in variant:
                texts[path] = texts[path].replace(old, new)
            for path, text in texts.items():
                (src / path).write_text(text)
            return
    raise SystemExit(f"mutant {mutant.name} no longer applies to src/: update scripts/mutants.py")


def run_tests(src: Path, tests: list[str]) -> tuple[bool, list[str]]:
    """Run the tests against ``src``; (passed, the ids of the tests that failed)."""
    env = dict(os.environ, ROOMS_PYODIDE_SRC=str(src), ROOMS_PYODIDE_REQUIRED="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *tests],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.MULTILINE)
    if result.returncode not in (0, 1):  # 1: tests failed; anything else: pytest itself did
        sys.stdout.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"pytest could not run ({result.returncode})")
    return result.returncode == 0, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only this mutant (repeatable)")
    parser.add_argument("--tests", nargs="+", default=["tests/pyodide"],
                        help="pytest arguments (default: the whole Pyodide tier)")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the tree to mutate")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list or not chosen:
        for mutant in MUTANTS:
            print(f"{mutant.name:32} {mutant.what}")
        return 0 if args.list else 2
    with tempfile.TemporaryDirectory(prefix="rooms-mutant-") as tmp:
        src = Path(tmp) / "src"
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(args.src, src, ignore=ignore)
        passed, failed = run_tests(src, args.tests)
        if not passed:
            print(f"the unmutated tree fails {failed}: fix that first")
            return 1
        print(f"unmutated: {' '.join(args.tests)} passes")
        survivors = []
        for mutant in chosen:
            shutil.rmtree(src)
            shutil.copytree(args.src, src, ignore=ignore)
            apply(mutant, src)
            passed, failed = run_tests(src, args.tests)
            verdict = "SURVIVED" if passed else "killed by " + ", ".join(failed)
            print(f"{mutant.name}: {verdict}", flush=True)
            if passed:
                survivors.append(mutant.name)
    if survivors:
        print(f"{len(survivors)} mutant(s) survived: {', '.join(survivors)}")
        return 1
    print(f"all {len(chosen)} mutants were killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
