"""Local runtime settings: secrets and vars from `.dev.vars`, like `wrangler dev` reads them."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from rooms.archive import ArchivePolicy
from rooms.auth import DEFAULT_TOKEN_POLICY, TokenPolicy, token_policy_from
from rooms.front import FrontConfig, parse_origins
from rooms.guest import parse_switch
from rooms.limits import Limits, SettingsModel, settings_from_json
from roomsd.bindings import Faults
from roomsd.rooms import HibernationPolicy

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(Exception):
    """A setting is missing or invalid; the message says which and why."""


def read_dev_vars(path: Path) -> dict[str, str]:
    """Parse a `.dev.vars` file (dotenv syntax: KEY=value, # comments, optional quotes)."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected KEY=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def ensure_dev_secret(path: Path, name: str = "JWT_SECRET") -> str:
    """A secret from `.dev.vars`, created there on first run so one command just works."""
    current = read_dev_vars(path).get(name)
    if current:
        return current
    secret = secrets.token_urlsafe(32)
    # Secrets: readable by this user only (a new file is created 0600; an existing one is not
    # widened). A last line without its newline gets one first, or the new line would join it.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        if path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n"):
            f.write("\n")
        f.write(f"{name}={secret}\n")
    return secret


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8787
    data_dir: Path = PROJECT_ROOT / ".data"
    public_dir: Path = PROJECT_ROOT / "public"
    migrations_dir: Path = PROJECT_ROOT / "migrations"
    jwt_secret: str = ""
    admin_token: str | None = None
    metrics_token: str | None = None  # GET /metrics also takes this one (docs/admin.md#metrics)
    allowed_origins: frozenset[str] = frozenset()
    limits: Limits = field(default_factory=Limits)
    hibernation: HibernationPolicy = field(default_factory=HibernationPolicy)
    heartbeat_s: float = 30.0
    archive: ArchivePolicy = field(default_factory=ArchivePolicy)
    faults: Faults = field(default_factory=Faults)
    guest_tokens: bool = True  # POST /auth/guest; on locally, off by default on Cloudflare
    tokens: TokenPolicy = DEFAULT_TOKEN_POLICY  # TOKEN_MAX_LIFETIME_S, TOKEN_AUDIENCE, _ISSUER
    # A line per published message costs more than storing it (a write to stderr each).
    log_messages: bool = False
    # The writes of one event-loop iteration share a commit (roomsd.output_gate). The
    # environment's ROOMS_COMMIT_EACH_MESSAGE=1 commits every message alone instead: for
    # benchmarks that compare the two (BENCHMARKS.md).
    group_commit: bool = field(
        default_factory=lambda: os.environ.get("ROOMS_COMMIT_EACH_MESSAGE", "") != "1"
    )
    # Abuse bounds of the process (docs/security.md): rooms that hold nothing yet one user or
    # one address may open per minute (Cloudflare: the NEW_ROOMS binding in wrangler.jsonc), and
    # the WebSockets one client address may hold open across all rooms.
    new_rooms_per_minute: int = 30
    max_connections_per_address: int = 256
    # How long a connection may take to send a complete request head (and stay idle between
    # requests): slow-header clients hold a socket each (`server.runner_options`).
    request_head_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if self.new_rooms_per_minute < 1 or self.max_connections_per_address < 1:
            raise ConfigError(
                "NEW_ROOMS_PER_MINUTE and MAX_CONNECTIONS_PER_ADDRESS must be whole numbers >= 1"
            )

    @property
    def front(self) -> FrontConfig:
        return FrontConfig(
            jwt_secret=self.jwt_secret,
            allowed_origins=self.allowed_origins,
            guest_tokens=self.guest_tokens,
            tokens=self.tokens,
        )


def vars_from(dev_vars: Path) -> dict[str, str]:
    """`.dev.vars` overlaid by the process environment (the environment wins)."""
    merged = read_dev_vars(dev_vars)
    keys = (
        "JWT_SECRET",
        "ADMIN_TOKEN",
        "METRICS_TOKEN",
        "ALLOWED_ORIGINS",
        "ROOM_LIMITS",
        "ARCHIVE_POLICY",
        "GUEST_TOKENS",
        "NEW_ROOMS_PER_MINUTE",
        "MAX_CONNECTIONS_PER_ADDRESS",
    )
    for key in keys:
        if key in os.environ:
            merged[key] = os.environ[key]
    return merged


def limits_from(raw: str | None) -> Limits:
    """`ROOM_LIMITS`: a JSON object of `Limits` fields; invalid values fail at start-up."""
    return _settings(Limits, raw, "ROOM_LIMITS")


def archive_policy_from(raw: str | None) -> ArchivePolicy:
    """`ARCHIVE_POLICY`: a JSON object of `ArchivePolicy` fields, validated at start-up."""
    return _settings(ArchivePolicy, raw, "ARCHIVE_POLICY")


def _settings(model: type[SettingsModel], raw: str | None, name: str) -> SettingsModel:
    try:
        return settings_from_json(model, raw, name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def count_from(values: dict[str, str], name: str, default: int) -> int:
    """A whole-number setting >= 1 from `.dev.vars` or the environment; ``default`` if unset."""
    raw = values.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1 or len(raw) > 9:
        raise ConfigError(f"{name} must be a whole number from 1 to 999999999, not {raw!r}")
    return int(raw)


def guest_tokens_from(raw: str | None) -> bool:
    """`GUEST_TOKENS`: 1/0 (true/false, yes/no, on/off); on when unset in the local runtime."""
    try:
        return parse_switch(raw, default=True)
    except ValueError as exc:
        raise ConfigError(f"GUEST_TOKENS: {exc}") from None


def origins_from(raw: str | None) -> frozenset[str]:
    """`ALLOWED_ORIGINS`: see `rooms.front.parse_origins` (empty: this server's own pages only)."""
    try:
        return parse_origins(raw)
    except ValueError as exc:
        raise ConfigError(f"ALLOWED_ORIGINS: {exc}") from None


def token_policy_of(values: dict[str, str]) -> TokenPolicy:
    """TOKEN_MAX_LIFETIME_S, TOKEN_AUDIENCE and TOKEN_ISSUER (see `rooms.auth.TokenPolicy`)."""
    try:
        return token_policy_from(
            values.get("TOKEN_MAX_LIFETIME_S"),
            values.get("TOKEN_AUDIENCE"),
            values.get("TOKEN_ISSUER"),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
