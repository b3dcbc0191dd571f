"""The service in the real workerd (`wrangler dev`), shared by the tiers that run against it.

tests/e2e runs its whole suite against it and tests/browser runs the chat page against it. Both
ask the one `WorkerdPool` of the session for a `Profile` (the settings a service starts with);
the pool starts one `wrangler dev` per distinct profile on first use (~8 s each, most of a core
while it starts) and stops them all when the session ends. Its state (D1, R2, every room's
SQLite) lives for the whole session, so tests use room names no other test uses.

`tests/local/conftest.py` starts the local runtime with the same settings (`make_settings`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rooms.archive import ArchivePolicy
from rooms.limits import Limits
from tests.conftest import workerd_toolchain
from tests.local.conftest import SECRET
from workerd.wrangler import (
    PROJECT_ROOT,
    Toolchain,
    WranglerDev,
    apply_migrations,
    dev_args,
    free_port,
    read_jsonc,
)

__all__ = ["ADMIN_TOKEN", "SECRET", "Profile", "WorkerdPool", "workerd_pool"]

ADMIN_TOKEN = "admin-token-for-tests-0123456789abcdef"


@dataclass(frozen=True)
class Profile:
    """The settings a service is started with, the same on every runtime.

    Profiles that compare equal share one `wrangler dev`; ``name`` only labels test ids.
    """

    limits: Limits = field(default_factory=lambda: Limits(messages_per_second=1000, burst=1000))
    archive: ArchivePolicy = field(default_factory=ArchivePolicy)
    allowed_origins: tuple[str, ...] = ()
    guest_tokens: bool = True
    admin_token: str | None = ADMIN_TOKEN
    # Tests open hundreds of new rooms a minute from one address; the new-room limit has its
    # own profile (tests/e2e/test_abuse.py).
    new_rooms_per_minute: int = 100_000
    # LOG_CONNECTIONS=1 on workerd (off unless set); the local runtime always logs connections.
    log_connections: bool = False
    name: str = field(default="default", compare=False)

    def variables(self) -> dict[str, str]:
        """The Worker's vars/secrets for this profile (what `.dev.vars` would hold)."""
        variables = {
            "JWT_SECRET": SECRET,
            "GUEST_TOKENS": "1" if self.guest_tokens else "0",
            "ALLOWED_ORIGINS": ",".join(self.allowed_origins),
            "ROOM_LIMITS": self.limits.model_dump_json(),
            "ARCHIVE_POLICY": self.archive.model_dump_json(),
        }
        if self.admin_token is not None:  # unset, the admin API refuses every request
            variables["ADMIN_TOKEN"] = self.admin_token
        if self.log_connections:
            variables["LOG_CONNECTIONS"] = "1"
        return variables


def snapshot_project(target: Path) -> Path:
    """A copy of the Worker's sources as they are now, for `wrangler dev --config`; its config.

    wrangler dev reloads the Worker whenever a file under its entry point's directory changes,
    with no flag to turn that off; an edit to src/ during a session would then restart workerd
    under running tests (or fail to start it, half-written). The session tests the sources it
    started with instead, as the local runtime does (Python imports them once). wrangler.jsonc
    and src/ are copied; public/, migrations/ and python_modules/ are linked.
    """
    target.mkdir(parents=True)
    shutil.copy2(PROJECT_ROOT / "wrangler.jsonc", target / "wrangler.jsonc")
    shutil.copytree(
        PROJECT_ROOT / "src", target / "src", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("public", "migrations", "python_modules"):
        (target / name).symlink_to(PROJECT_ROOT / name, target_is_directory=True)
    return target / "wrangler.jsonc"


class WorkerdPool:
    """One `wrangler dev` per profile, started on first use and stopped at the session's end."""

    def __init__(self, tools: Toolchain, root: Path) -> None:
        self.tools = tools
        self.root = root
        self.running: dict[Profile, WranglerDev] = {}
        self._started = 0
        self._template: Path | None = None
        self.config = snapshot_project(root / "project")

    def _migrated_state(self, target: Path) -> None:
        # Applying migrations/ takes a wrangler run (~4 s); do it once and copy the result.
        if self._template is None:
            self._template = self.root / "template-state"
            apply_migrations(self.tools, self._template)
        shutil.copytree(self._template, target)

    def get(self, profile: Profile) -> WranglerDev:
        if profile not in self.running:
            # Never reused, even after a failed start: its state directory exists already.
            index, self._started = self._started, self._started + 1
            state = self.root / f"state-{index}"
            self._migrated_state(state)
            env_file = self.root / f"vars-{index}.env"
            # Single quotes: dotenv takes the JSON values literally.
            env_file.write_text("".join(f"{k}='{v}'\n" for k, v in profile.variables().items()))
            config = self._config_for(profile, index)
            port = free_port()
            args = [*dev_args(port, state, env_file=env_file), "--config", str(config)]
            dev = WranglerDev(
                self.tools,
                args,
                port,
                self.root / f"wrangler-{index}-{profile.name}.log",
            )
            dev.start()
            self.running[profile] = dev
        return self.running[profile]

    def _config_for(self, profile: Profile, index: int) -> Path:
        """The snapshot's wrangler.jsonc with the profile's NEW_ROOMS limit: a binding's limit
        is configuration, not a var. Written beside it, so `main` resolves the same."""
        config = read_jsonc(self.config)
        for binding in config.get("ratelimits", []):
            if binding["name"] == "NEW_ROOMS":
                binding["simple"]["limit"] = profile.new_rooms_per_minute
        path = self.config.with_name(f"wrangler-{index}.jsonc")
        path.write_text(json.dumps(config, indent=2))
        return path

    def stop_all(self) -> None:
        for dev in self.running.values():
            dev.stop()
        self.running.clear()


_pool: WorkerdPool | None = None


@pytest.fixture(scope="session")
def workerd_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerdPool]:
    """The session's pool; skipped when `make workerd-setup` has not run (unless required).

    Each conftest that imports this fixture gets its own session-scoped instance of it; they
    all hand out the same pool, so tiers that ask for the same profile share its `wrangler dev`.
    """
    global _pool
    tools = workerd_toolchain()
    if _pool is None:
        _pool = WorkerdPool(tools, tmp_path_factory.mktemp("workerd"))
    pool = _pool
    yield pool
    pool.stop_all()  # at the session's end; a second call (another conftest's) finds none
