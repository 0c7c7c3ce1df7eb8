"""The layout holds: imports run one way between layers, no module cycle, each layer imports alone, every family
implements the adapter interface, and importing yoloprune or its command line loads nothing heavy.

The import graph is read from the code itself (every ``import`` statement, inside functions too, except those under
``if TYPE_CHECKING:``), so a lazy import that runs back up a layer fails here as surely as a top-level one.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "yoloprune"

LAYERS = {  # lower numbers are lower layers; a module may import its own layer and those below it
    "io": 0,
    "images": 0,
    "options": 0,
    "unpickle": 0,
    "data": 0,
    "graph": 1,
    "adapters": 2,
    "pruning": 3,
    "export": 4,
    "evaluate": 4,
    "train": 4,
    "workflows": 5,
    "cli": 6,
    "__main__": 6,
    "__init__": 6,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports() -> dict[str, set[str]]:
    """Every yoloprune module and the yoloprune modules it imports (at any depth of its code)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        found: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                candidates = [f"{base}.{a.name}" for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for target in candidates:
                if target.startswith("yoloprune") and target in modules and target != name:
                    found.add(target)
                    break
        graph[name] = found
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


def test_imports_run_one_way_between_layers():
    upward = [
        f"{m} -> {t}"
        for m, targets in _imports().items()
        for t in targets
        if _layer(t) > _layer(m) and t != "yoloprune"
    ]
    assert upward == []


def test_no_module_imports_itself_through_others():
    graph = _imports()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif not state.get(nxt):
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if not state.get(start):
            visit(start, [start])
    # a package's __init__ re-exporting its own submodules is not a cycle between modules
    cycles = [c for c in cycles if not (len(c) == 3 and c[0] == c[2] and c[1].startswith(c[0] + "."))]
    assert cycles == []


FRESH = """
import json, sys
import importlib
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in
      ('torch', 'ultralytics', 'yolov5', 'yolov7', 'yolox', 'onnxruntime', 'yoloprune'))))
"""
HEAVY = ("ultralytics", "yolov5", "yolov7", "yolox")


def _loaded_by(module: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", FRESH, module], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("module", "not_above"),
    [
        ("yoloprune.graph", 1),
        ("yoloprune.adapters", 2),
        ("yoloprune.pruning.run", 3),
    ],
)
def test_each_layer_imports_alone(module, not_above):
    loaded = _loaded_by(module)
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}, "no YOLO package until a family is used"
    above = {m for m in loaded if m.startswith("yoloprune.") and _layer(m) > not_above}
    assert above == set()


def test_importing_yoloprune_or_its_cli_loads_no_torch():
    for module in ("yoloprune", "yoloprune.cli"):
        loaded = _loaded_by(module)
        assert "torch" not in loaded and not {m for m in loaded if m.split(".")[0] in HEAVY}, (module, loaded)


RUN_CLI = """
import json, sys
from yoloprune.cli import main
code = main(json.loads(sys.argv[1]))
print(json.dumps([code, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', *HEAVY))]))
""".replace("HEAVY", repr(HEAVY))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prune", "yolov8n.yaml", "-o", "{tmp}/out.pt", "--ratio", "2"], "ratio must be in (0, 1), got 2.0"),
        (["prune", "yolov8n.yaml", "-o", "{tmp}/taken.pt"], "taken.pt exists; pass --overwrite"),
        (["export", "yolov8n.yaml", "-o", "{tmp}/taken.pt"], "taken.pt exists; pass --overwrite"),
        (["prune", "{tmp}/missing.pt", "-o", "{tmp}/out.pt"], "no such model: {tmp}/missing.pt"),
        (["bench", "{tmp}/missing.onnx"], "no such model: {tmp}/missing.onnx"),
        (["inspect", "{tmp}/missing.PT"], "no such model: {tmp}/missing.PT"),
        (["bench", "{tmp}/taken.pt", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
        (["eval", "{tmp}/taken.pt", "--data", "d.yaml", "--batch", "0"], "argument --batch: must be at least 1"),
        (["finetune", "--data", "{tmp}", "-o", "{tmp}/ft"], "give MODEL (or --resume"),
        (["finetune", "m.yaml", "--data", "{tmp}", "-o", "{tmp}/ft", "epochs=2.5"], "epochs=2.5: epochs takes int"),
        (["sweep", "m.yaml", "--data", "{tmp}", "-o", "{tmp}/sw", "--targets", "0.5,2"], "--targets: 2 is outside"),
        (["sensitivity", "m.yaml", "--data", "{tmp}", "-o", "{tmp}/s", "--ratios", "1"], "a unit cannot lose all"),
        (["eval", "yolov8n.yaml", "--data", "{tmp}/none.yaml"], "no such dataset: {tmp}/none.yaml"),
        (["sensitivity", "m.yaml", "--data", "{tmp}", "-o", "{tmp}"], "{tmp} holds a sensitivity analysis; pass"),
        (["finetune", "{tmp}/taken.pt", "--data", "{tmp}/none", "-o", "{tmp}/ft"], "no such dataset: {tmp}/none"),
    ],
)
def test_bad_settings_and_paths_are_refused_before_torch_loads(tmp_path, argv, message):
    (tmp_path / "taken.pt").write_bytes(b"mine")
    if argv[0] == "sensitivity" and "--ratios" not in argv:  # a folder holding an earlier analysis
        (tmp_path / "ratios.json").write_text("{}")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    done = subprocess.run(
        [sys.executable, "-c", RUN_CLI, json.dumps(argv)], capture_output=True, text=True, timeout=300
    )
    code, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert (code, loaded) == (2, []), done.stderr
    assert message.replace("{tmp}", str(tmp_path)) in done.stderr
    assert (tmp_path / "taken.pt").read_bytes() == b"mine"
    left = {"taken.pt", "ratios.json", ".yoloprune.lock"} if argv[0] == "sensitivity" else {"taken.pt"}
    assert {p.name for p in tmp_path.iterdir()} <= left and (tmp_path / "taken.pt").is_file()


def test_every_family_implements_the_adapter_interface():
    from yoloprune.adapters import FAMILIES, GENERIC, Adapter, adapter

    members = [name for name in dir(Adapter) if not name.startswith("_")] + list(Adapter.__annotations__)
    assert set(members) >= {"FAMILY", "PREPROCESS", "FIXED_PARAMETERS", "load", "save", "rebuild", "nms_layout"}
    for family in FAMILIES:
        try:
            found = adapter(family)
        except ImportError:  # pragma: no cover - every extra is installed in CI
            continue
        missing = [m for m in members if not hasattr(found, m)]
        assert missing == [], (family, missing)
        assert family == found.FAMILY
    assert all(hasattr(GENERIC, m) for m in members)
