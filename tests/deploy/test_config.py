"""The production wrangler.jsonc, and README's deploy commands against what they name."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.project import ROOT, readme_deploy_commands
from workerd.wrangler import LOCAL_FLAGS, Toolchain, wrangler_config

MAKEFILE = ROOT / "Makefile"
WRANGLER = "node_modules/.bin/wrangler"


def compatibility_flags(config: Any) -> list[str]:
    """Every compatibility_flags entry, top level and per environment."""
    if isinstance(config, dict):
        found = list(config.get("compatibility_flags", []))
        for key, value in config.items():
            if key != "compatibility_flags":
                found += compatibility_flags(value)
        return found
    if isinstance(config, list):
        return [flag for item in config for flag in compatibility_flags(item)]
    return []


def test_wrangler_jsonc_carries_no_local_only_flag() -> None:
    """The flags that make workerd run our dev Pyodide bundle live on `wrangler dev`'s command
    line (local/workerd), never in the file a deploy uploads."""
    assert "python_workers_development" in LOCAL_FLAGS
    flags = compatibility_flags(wrangler_config())
    assert "python_workers" in flags
    for flag in flags:
        assert flag not in LOCAL_FLAGS, flag
        assert flag != "python_workers_development", flag
        assert not flag.startswith("no_python_workers"), flag


def node_dir() -> Path:
    """Where scripts/setup_pyodide.py installs Node 24 (the `node` that `make deploy` uses)."""
    script = ROOT / "scripts" / "setup_pyodide.py"
    spec = importlib.util.spec_from_file_location("setup_pyodide", script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    node: Path = module.NODE
    return node.parent.relative_to(ROOT)


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", MAKEFILE.read_text(), flags=re.MULTILINE))


def wrangler_commands() -> list[list[str]]:
    return [argv[1:] for argv in readme_deploy_commands() if argv[0] == WRANGLER]


def test_readme_deploy_commands_name_what_exists() -> None:
    """Each command of README's "Deploy to Cloudflare" runs something that exists and names
    resources wrangler.jsonc declares: make targets, the Node that set-up installs, the pinned
    wrangler, the D1 database and R2 bucket, and secrets the Worker reads."""
    config = wrangler_config()
    databases = config["d1_databases"]
    buckets = {bucket["bucket_name"] for bucket in config["r2_buckets"]}
    source = "\n".join(path.read_text() for path in (ROOT / "src").rglob("*.py"))
    secrets: set[str] = set()
    commands = readme_deploy_commands()
    assert commands, "no ```sh block in README's deploy section"
    for argv in commands:
        match argv:
            case ["make", target]:
                assert target in make_targets(), f"`make {target}`: no such target"
            case ["export", assignment]:
                assert assignment == f"PATH=$PWD/{node_dir()}:$PATH", assignment
            case [command, *args] if command == WRANGLER:
                match args:
                    case ["login"]:
                        pass
                    case ["d1", "create", name]:
                        assert name in {db["database_name"] for db in databases}
                    case ["r2", "bucket", "create", name]:
                        assert name in buckets
                    case ["d1", "migrations", "apply", database, "--remote"]:
                        (declared,) = [
                            db
                            for db in databases
                            if database in (db["binding"], db["database_name"])
                        ]
                        assert any((ROOT / declared["migrations_dir"]).glob("*.sql"))
                    case ["secret", "put", name]:
                        assert f'"{name}"' in source, f"the Worker never reads {name}"
                        assert name not in config["vars"], f"{name} is a plain var too"
                        secrets.add(name)
                    case _:
                        pytest.fail(f"README runs `wrangler {' '.join(args)}`: teach this test")
            case _:
                pytest.fail(f"README runs `{' '.join(argv)}`: teach this test what it needs")
    assert ["make", "deploy"] in commands
    assert {"JWT_SECRET", "ADMIN_TOKEN"} <= secrets


def test_make_deploy_uses_the_pinned_node_and_wrangler() -> None:
    """The deploy recipe checks the bundle first, then runs README's wrangler on README's Node;
    that wrangler is the version package.json pins."""
    recipe = MAKEFILE.read_text().split("\ndeploy:", 1)[1].split("\n\n", 1)[0]
    assert "pytest -q tests/deploy" in recipe
    assert f'PATH="$(CURDIR)/{node_dir()}:$$PATH" {WRANGLER} deploy' in recipe
    assert recipe.index("tests/deploy") < recipe.index(f"{WRANGLER} deploy")
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["wrangler"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), f"wrangler {pinned} is not pinned"
    wrangler = ROOT / WRANGLER
    if wrangler.exists():  # after `make workerd-setup`
        package = wrangler.resolve().parents[1] / "package.json"
        assert json.loads(package.read_text())["version"] == pinned


def test_readme_wrangler_commands_exist_in_the_pinned_wrangler(tools: Toolchain) -> None:
    """`wrangler <command> --help` (offline) names the command README runs and knows its flags."""
    assert (ROOT / node_dir() / "node") == tools.node
    for args in wrangler_commands():
        result = tools.run(*args, "--help", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        usage = result.stdout.strip().splitlines()[0].split()
        words = [word for word in usage[1:] if not word.startswith(("<", "["))]
        assert usage[0] == "wrangler"
        assert args[: len(words)] == words, f"wrangler {' '.join(args)}: usage is {usage}"
        for flag in (arg for arg in args if arg.startswith("--")):
            assert flag in result.stdout, f"wrangler {' '.join(words)} has no {flag}"


def test_the_new_rooms_binding_matches_the_local_default() -> None:
    """docs/protocol.md#rooms: one default for both runtimes, 30 rooms a minute."""
    from roomsd.config import Settings

    (binding,) = [b for b in wrangler_config()["ratelimits"] if b["name"] == "NEW_ROOMS"]
    assert binding["simple"] == {"limit": Settings().new_rooms_per_minute, "period": 60}
