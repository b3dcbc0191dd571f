"""Where the clients' tokens come from: minted from the signing secret, given, or a command."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rooms.auth import mint_token

TOKEN_COMMAND_TIMEOUT_S = 30.0
TOKEN_TTL_S = 6 * 3600


class TokenError(Exception):
    """No usable token source; the message says what to pass."""


@dataclass(frozen=True)
class TokenSource:
    """Exactly one of: ``secret`` (mint per user), ``token`` (one for all), ``command``."""

    secret: str | None = None
    token: str | None = None
    command: str | None = None

    @property
    def kind(self) -> str:
        return "secret" if self.secret else "token" if self.token else "command"

    def mint(self, user_id: str) -> str:
        assert self.secret is not None
        return mint_token(self.secret, user_id, ttl_s=TOKEN_TTL_S)

    def resolve(self, user_ids: list[str]) -> dict[str, str] | str | None:
        """Tokens decided up front: one for everyone, one per user, or None (minted later)."""
        if self.secret:
            return None
        if self.token:
            return self.token
        assert self.command is not None
        if "{user}" not in self.command:
            return self._run(self.command)
        tokens: dict[str, str] = {}
        for user in user_ids:
            tokens[user] = self._run(self.command.replace("{user}", shlex.quote(user)))
        return tokens

    def _run(self, command: str) -> str:
        try:
            done = subprocess.run(
                command,
                shell=True,
                capture_output=True,
                text=True,
                timeout=TOKEN_COMMAND_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TokenError(
                f"--token-command took longer than {TOKEN_COMMAND_TIMEOUT_S:g}s"
            ) from None
        token = done.stdout.strip()
        if done.returncode != 0 or not token:
            detail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise TokenError(f"--token-command failed (exit {done.returncode}): {detail[0]}")
        return token


def secret_from_dev_vars(path: Path) -> str | None:
    """JWT_SECRET from a `.dev.vars` file (KEY=value lines), or None."""
    if not path.is_file():
        return None
    for raw in path.read_text().splitlines():
        key, sep, value = raw.strip().partition("=")
        if sep and key.strip() == "JWT_SECRET":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            return value or None
    return None


def token_source(
    *,
    secret: str | None,
    secret_env: str | None,
    dev_vars: Path | None,
    token: str | None,
    command: str | None,
    default_dev_vars: Path,
) -> TokenSource:
    given = [x for x in (secret, secret_env, dev_vars, token, command) if x]
    if len(given) > 1:
        raise TokenError(
            "pass only one of --secret, --secret-env, --dev-vars, --token, --token-command"
        )
    if token:
        return TokenSource(token=token)
    if command:
        return TokenSource(command=command)
    if secret:
        return TokenSource(secret=secret)
    if secret_env:
        value = os.environ.get(secret_env)
        if not value:
            raise TokenError(f"--secret-env {secret_env}: that environment variable is empty")
        return TokenSource(secret=value)
    if dev_vars:
        value = secret_from_dev_vars(dev_vars)
        if not value:
            raise TokenError(f"--dev-vars {dev_vars}: no JWT_SECRET there")
        return TokenSource(secret=value)
    # Defaults for a local runtime: $JWT_SECRET, then the project's .dev.vars.
    value = os.environ.get("JWT_SECRET") or secret_from_dev_vars(default_dev_vars)
    if value:
        return TokenSource(secret=value)
    raise TokenError(
        "no token source: pass --secret, --secret-env VAR, --dev-vars PATH (for a server whose "
        "JWT_SECRET you know), --token TOKEN or --token-command CMD (for a deployed service)"
    )
