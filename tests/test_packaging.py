"""The package builds as PyPI would take it: an sdist and a wheel from a clean copy of the tracked files, with every
module, the console script, one version and the README as the description."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import yoloprune

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """sdist and wheel built by setuptools' PEP 517 backend in a copy of the tracked files (the checkout is left as
    it is: no build/ or egg-info written into it)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to know the tracked files")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in tracked:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    for kind in ("sdist", "wheel"):  # one process each: the backend keeps state between builds
        script = f"import sys; from setuptools import build_meta; build_meta.build_{kind}(sys.argv[1])"
        done = subprocess.run([sys.executable, "-c", script, str(dist)], cwd=source, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    (sdist,), (wheel,) = dist.glob("*.tar.gz"), dist.glob("*.whl")
    return sdist, wheel, tracked


def test_the_wheel_holds_every_module_the_script_and_one_version(built):
    _, wheel, tracked = built
    assert wheel.name == f"yoloprune-{yoloprune.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"yoloprune-{yoloprune.__version__}.dist-info"
        metadata = z.read(f"{info}/METADATA").decode()
        scripts = z.read(f"{info}/entry_points.txt").decode()
    modules = {n for n in tracked if n.startswith("yoloprune/") and n.endswith(".py")}
    assert modules and modules <= names
    assert not any(n.startswith(("tests/", "tools/")) for n in names)
    assert f"Version: {yoloprune.__version__}" in metadata and "Requires-Dist: ultralytics>=8.4" in metadata
    assert "# yoloprune" in metadata  # the README is the long description
    assert "yoloprune = yoloprune.cli:main" in scripts


def test_the_sdist_holds_the_sources_and_the_tests(built):
    sdist, _, _ = built
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "yoloprune/cli.py", "yoloprune/graph/graph.py"} <= names
