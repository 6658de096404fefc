"""Fixtures of the system tests: one sandbox and one packaged install per session."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.helpers import CHECKOUT, SYSTEM_PYTHON, readme_block
from tests.system.sandbox import Sandbox, Unavailable

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = "/var/cache/chatsvc-systest/wheels"
EXCLUDE = (".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


def build_wheelhouse(dest: Path) -> None:
    """Wheels of what ``pip install .`` needs (build backend and dependencies).

    The sandbox has only ``lo``; the operator's ``pip install .`` runs inside with
    PIP_NO_INDEX and this directory instead of an index.  Downloaded here, on the
    host, with this interpreter's pip and the target interpreter's version.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wants = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    wants += project["project"]["optional-dependencies"]["cluster"]  # the cluster test
    # pip download judges environment markers by the running interpreter, not by
    # --python-version: redis needs this below Python 3.11.3 (Debian 12 has 3.11.2)
    wants.append("async-timeout>=4.0.3")
    version = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pip = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check"),
            *("--only-binary=:all:", f"--python-version={version}", "-d", str(dest), *wants),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if pip.returncode != 0:
        raise Unavailable(f"cannot download the dependencies' wheels: {pip.stderr.strip()[-500:]}")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    try:
        box = Sandbox()
    except Unavailable as exc:
        pytest.skip(f"system tests need a real systemd in namespaces: {exc}")
    try:
        if not Path(SYSTEM_PYTHON).exists():
            raise Unavailable(f"no {SYSTEM_PYTHON} (the interpreter deploy/README.md uses)")
        wheels = tmp_path_factory.mktemp("wheels")
        build_wheelhouse(wheels)
    except Unavailable as exc:
        box.down()
        pytest.skip(f"system tests: {exc}")
    try:
        box.up()
        box.copy_in(ROOT, CHECKOUT, EXCLUDE)
        box.copy_in(wheels, WHEELHOUSE)
        yield box
    finally:
        box.down()


@pytest.fixture(scope="session")
def installed(sandbox: Sandbox) -> Sandbox:
    """chatsvc installed and started by the commands of deploy/README.md "Install"."""
    script = readme_block("Install")
    assert f"{SYSTEM_PYTHON} -m venv /opt/chatsvc/venv" in script
    sandbox.run(
        ["bash", "-euxo", "pipefail", "-c", f"cd {CHECKOUT}\n{script}"],
        timeout=120,
        # no network inside: pip gets its packages from the wheelhouse, not an index
        env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELHOUSE, "PIP_CONFIG_FILE": "/dev/null"},
    )
    return sandbox
