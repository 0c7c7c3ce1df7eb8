"""``--repo``: YOLOv5 checkpoints made with a clone of the repository, with a module the PyPI package has not got."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

yolov5 = pytest.importorskip("yolov5")

MAKE = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    from models.common import ConvX
    from models.yolo import Model
    net = Model(sys.argv[1] + "/models/yolov5n.yaml", nc=3)
    net.model[1].__class__ = ConvX  # a user's own block, pickled as models.common.ConvX
    torch.save({"model": net.half(), "epoch": -1}, sys.argv[2])
    """
)
CHECK = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    net = torch.load(sys.argv[2], weights_only=False)["model"].float().eval()
    out = net(torch.zeros(1, 3, 64, 64))[0]
    block = net.model[1]
    print(type(block).__module__, type(block).__name__, block.conv.in_channels, block.conv.out_channels,
          sum(p.numel() for p in net.parameters()), tuple(out.shape))
    """
)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A repository-style layout (bare ``models``/``utils``) made from the installed package, plus ConvX."""
    root = tmp_path_factory.mktemp("clone")
    package = Path(yolov5.__file__).parent
    for part in ("models", "utils"):
        shutil.copytree(package / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    for path in root.rglob("*.py"):
        path.write_text(re.sub(r"\byolov5\.(models|utils)\b", r"\1", path.read_text()))
    with open(root / "models" / "common.py", "a") as f:
        f.write("\n\nclass ConvX(Conv):\n    pass\n")
    return root


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_a_clone_checkpoint_prunes_with_repo_and_stays_loadable_by_the_clone(clone, tmp_path):
    ckpt, out = tmp_path / "best.pt", tmp_path / "pruned.pt"
    made = _run("-c", MAKE, str(clone), str(ckpt), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    args = ["-m", "yoloprune", "prune", str(ckpt), "--ratio", "0.3", "--imgsz", "64", "-o", str(out)]
    without = _run(*args, cwd=tmp_path)
    assert without.returncode == 2 and "models.common.ConvX" in without.stderr and "--repo" in without.stderr
    assert not out.exists()
    done = _run(*args, "--repo", str(clone), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    checked = _run("-c", CHECK, str(clone), str(out), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    module, name, cin, cout, params, shape = checked.stdout.split(maxsplit=5)
    assert (module, name, cin) == ("models.common", "ConvX", "16") and int(cout) < 32
    assert int(params) < 1_767_976 * 0.6 and shape.strip() == "(1, 252, 8)"  # 3 anchors x 84 cells, 3 classes + 5
