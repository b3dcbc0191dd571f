"""What the deploy checks read: wrangler.jsonc, the Pyodide pins and README's deploy commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PINS = ROOT / "tests" / "pyodide" / "requirements-pyodide.txt"
README = ROOT / "README.md"
DEPLOY_HEADING = "## Deploy to Cloudflare"


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
