"""`wrangler deploy --dry-run`: the upload is src/ plus the pinned python_modules/, nothing else."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import subprocess
import zlib
from pathlib import Path

from tests.deploy.conftest import SUMMARY, DryRun
from tests.deploy.project import ROOT, normalize, pinned_distributions

SRC = ROOT / "src"
VENDORED = ROOT / "python_modules"
PYODIDE_STATE = ROOT / ".cache" / "pyodide" / "state.json"
MAIN = "worker.py"
# Cloudflare's limit on a Worker's compressed size on the Free plan (10 MB on Paid).
FREE_PLAN_LIMIT_BYTES = 3_000_000


def source_files() -> set[str]:
    """Every file of src/ that git does not ignore (so no __pycache__), relative to src/."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", "src"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {
        Path(name).relative_to("src").as_posix()
        for name in listed.split("\0")
        if name and (ROOT / name).is_file()  # a file deleted in the work tree is not uploaded
    }


def record_of(dist_info: Path) -> dict[str, str]:
    """{path: "sha256=<urlsafe b64>"} from a wheel's RECORD ("" for RECORD itself)."""
    with (dist_info / "RECORD").open(newline="") as handle:
        return {row[0]: row[1] for row in csv.reader(handle) if row}


def sha256_field(content: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def vendored(bundle: DryRun) -> dict[str, bytes]:
    prefix = "python_modules/"
    return {k.removeprefix(prefix): v for k, v in bundle.files.items() if k.startswith(prefix)}


def test_src_is_uploaded_whole_and_without_bytecode(dry_run: DryRun) -> None:
    """Each file of src/ once, unchanged; `make setup` compiles src/ but no .pyc goes up."""
    assert any(SRC.rglob("__pycache__/*.pyc"))  # compiled before the dry run (conftest.py)
    uploaded = {k: v for k, v in dry_run.files.items() if not k.startswith("python_modules/")}
    assert set(uploaded) == source_files()
    assert MAIN in uploaded
    for name, content in uploaded.items():
        assert content == (SRC / name).read_bytes(), f"{name} differs from src/{name}"


def test_nothing_but_source_and_wheel_contents(dry_run: DryRun) -> None:
    """No bytecode, tests, local runtime, secrets or set-up stamps anywhere in the upload."""
    for name in dry_run.files:
        parts = name.split("/")
        assert "__pycache__" not in parts, name
        assert not name.endswith(".pyc"), name
        assert parts[0] not in {"tests", "local", "public", "scripts", ".wrangler"}, name
        assert parts[-1] not in {".dev.vars", ".rooms-vendored", ".synced", "pyvenv.cfg"}, name
    # Secrets come from `wrangler secret put`; a deploy never reads .dev.vars.
    assert "JWT_SECRET" not in dry_run.output
    assert "ADMIN_TOKEN" not in dry_run.output


def test_python_modules_are_exactly_the_pinned_wheels(dry_run: DryRun) -> None:
    """The dists are those of requirements-pyodide.txt, at those versions (workers-runtime-sdk
    too), and the files are exactly those their RECORDs list, with those hashes."""
    files = vendored(dry_run)
    dist_infos = sorted(p for p in VENDORED.glob("*.dist-info") if p.is_dir())
    names = [p.name.removesuffix(".dist-info").rsplit("-", 1) for p in dist_infos]
    versions = {normalize(name): version for name, version in names}
    assert versions == pinned_distributions()
    expected: dict[str, str] = {}
    for dist_info in dist_infos:
        expected.update(record_of(dist_info))
    assert set(files) == set(expected)
    for name, content in files.items():
        if expected[name]:  # RECORD lists itself without a hash
            assert sha256_field(content) == expected[name], f"python_modules/{name} was modified"


def test_python_modules_are_the_tree_the_pyodide_tier_tested(dry_run: DryRun) -> None:
    """Byte for byte the unpacked wheels that tests/pyodide mounts as python_modules/."""
    tested = Path(json.loads(PYODIDE_STATE.read_text())["python_modules"])
    tree = {
        path.relative_to(tested).as_posix(): path.read_bytes()
        for path in tested.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.name != ".complete"
    }
    assert vendored(dry_run) == tree


def test_compressed_size(dry_run: DryRun) -> None:
    """The upload's gzip size, computed as wrangler does (one gzip of every module's content)
    and matching what it reports; printed in the summary of `make test`."""
    modules = [dry_run.files[MAIN]] + [v for k, v in dry_run.files.items() if k != MAIN]
    raw = b"".join(modules)
    gzipped = len(zlib.compress(raw, 6, wbits=31))  # Node's gzipSync defaults
    assert round(len(raw) / 1024, 2) == dry_run.reported_kib
    assert abs(gzipped / 1024 - dry_run.reported_gzip_kib) < 0.01 * dry_run.reported_gzip_kib
    assert gzipped < FREE_PLAN_LIMIT_BYTES
    sources = sum(1 for k in dry_run.files if not k.startswith("python_modules/"))
    SUMMARY.append(
        f"deploy bundle (wrangler deploy --dry-run): {sources} files from src/ + "
        f"{len(dry_run.files) - sources} from python_modules/ ({len(pinned_distributions())} "
        f"pinned wheels), {dry_run.reported_kib:.2f} KiB, gzip {dry_run.reported_gzip_kib:.2f} "
        f"KiB (Free plan limit {FREE_PLAN_LIMIT_BYTES / 1e6:.0f} MB)"
    )
