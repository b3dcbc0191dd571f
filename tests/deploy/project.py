"""What the deploy checks read: wrangler.jsonc, the Pyodide pins and README's deploy commands."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WRANGLER_CONFIG = ROOT / "wrangler.jsonc"
PINS = ROOT / "tests" / "pyodide" / "requirements-pyodide.txt"
README = ROOT / "README.md"
DEPLOY_HEADING = "## Deploy to Cloudflare"


def read_jsonc(path: Path) -> Any:
    """A JSONC file (// and /* */ comments, trailing commas) as wrangler reads it."""
    text = path.read_text()
    out: list[str] = []
    i, in_string = 0, False
    while i < len(text):
        char = text[i]
        if in_string:
            out.append(char)
            if char == "\\":
                out.append(text[i + 1])
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = len(text) if i < 0 else i
            continue
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        else:
            out.append(char)
        i += 1
    return json.loads(re.sub(r",(\s*[}\]])", r"\1", "".join(out)))


def wrangler_config() -> dict[str, Any]:
    config: dict[str, Any] = read_jsonc(WRANGLER_CONFIG)
    return config


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_distributions() -> dict[str, str]:
    """{name: version} of the hash-pinned wheels the Pyodide and workerd tiers run."""
    text = PINS.read_text().replace("\\\n", " ")
    found = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.MULTILINE)
    return {normalize(name): version for name, version in found}


def readme_deploy_section() -> str:
    text = README.read_text()
    start = text.index(DEPLOY_HEADING)
    end = text.find("\n## ", start + len(DEPLOY_HEADING))
    return text[start : end if end >= 0 else len(text)]


def readme_deploy_commands() -> list[list[str]]:
    """Each command of the section's ```sh blocks as argv (comments dropped)."""
    commands: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", readme_deploy_section(), flags=re.DOTALL):
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands
