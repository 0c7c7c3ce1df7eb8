"""Hostile checkpoints: nothing a file names runs without --trust, through any command or ``yoloprune.load``.

Every payload here would touch a marker file if the code it names ran. Five routes are covered: calling an allowed
class with arguments of the file's choosing, dotted names that reach ``os`` through an allowed module, configs whose
strings a family's parser evaluates, the fine-tune paths that hand files to ultralytics' trainer, and imports made on
a file's say-so. A property test then generates pickles from a grammar of GLOBAL/REDUCE/NEWOBJ/BUILD/... over allowed
and forbidden names and checks that loading them runs nothing, evaluates nothing and imports nothing new.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from helpers import craft_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import yoloprune
from yoloprune.adapters.ultralytics import from_config
from yoloprune.cli import main
from yoloprune.data import synthesize
from yoloprune.io import UntrustedCheckpoint, load_checkpoint, load_data
from yoloprune.unpickle import SafeUnpickler

EVIL = "__import__('pathlib').Path({mark!r}).touch() or __import__('torch').nn.SiLU()"


class Call:
    """Pickles as ``func(*args)`` (a REDUCE of whatever ``func`` is)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _ops(*parts: bytes | str) -> bytes:
    """A protocol-4 pickle from opcodes and strings (each string pushed with SHORT_BINUNICODE)."""
    out = b"\x80\x04"
    for part in parts:
        if isinstance(part, str):
            raw = part.encode()
            out += pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw
        else:
            out += part
    return out + pickle.STOP


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Every hostile file, each aimed at its own marker."""
    from ultralytics.nn.autobackend import AutoBackend
    from ultralytics.nn.tasks import DetectionModel

    root = tmp_path_factory.mktemp("hostile")
    marks = root / "marks"
    marks.mkdir()
    data = synthesize(root / "data", train=2, val=2, imgsz=64, classes=2, seed=1)
    cfg = {**from_config("yolov8n.yaml").yaml, "nc": 2}
    files: dict[str, Path] = {}

    def mark(name: str) -> str:
        return str(marks / name)

    # 1. an allowed class called with the file's arguments: a config whose activation ultralytics evaluates ...
    evil_cfg = {**cfg, "activation": EVIL.format(mark=mark("constructor"))}
    torch.save({"model": Call(DetectionModel, evil_cfg), "train_args": {}}, root / "constructor.pt")
    files["constructor"] = root / "constructor.pt"
    # ... and AutoBackend, which would fully unpickle a second file that runs code
    second = root / "second.pt"
    torch.save({"model": Call(Path.touch, Path(mark("autobackend")))}, second)
    torch.save({"model": Call(AutoBackend, str(second))}, root / "autobackend.pt")
    files["autobackend"] = root / "autobackend.pt"
    # 2. a dotted protocol-4 name reaching os through a module the data reader allowed wholesale
    for module in ("torch.storage", "torch._utils", "torch"):
        key = f"dotted {module}"
        files[key] = craft_checkpoint(
            root / f"{key.replace(' ', '_')}.pt",
            _ops(
                module,
                "os.system",
                pickle.STACK_GLOBAL,
                f"touch {mark(key.replace(' ', '_'))}",
                pickle.TUPLE1,
                pickle.REDUCE,
            ),
        )
    # 3. only dicts and tensors, but a stored config whose strings a parser evaluates
    section = {"format": 1, "plan": {"removed": {}}, "imgsz": 64, "state_dict": {}, "names": {}}
    torch.save({"yoloprune": {**section, "family": "ultralytics", "config": evil_cfg}}, root / "config.pt")
    files["config"] = root / "config.pt"
    layer_cfg = {**cfg, "backbone": [[-1, 1, "attempt_load_weights", [str(second)]], *cfg["backbone"][1:]]}
    torch.save({"yoloprune": {**section, "family": "ultralytics", "config": layer_cfg}}, root / "layer.pt")
    files["layer name"] = root / "layer.pt"
    v5_cfg = {
        "nc": 2,
        "depth_multiple": 0.33,
        "width_multiple": 0.25,
        "anchors": 3,
        "backbone": [[-1, 1, "Conv", [16, 3, 2, f"__import__('pathlib').Path({mark('v5arg')!r}).touch()"]]],
        "head": [[[0], 1, "Detect", ["nc", "anchors"]]],
    }
    torch.save({"yoloprune": {**section, "family": "yolov5", "config": v5_cfg}}, root / "v5config.pt")
    files["yolov5 config argument"] = root / "v5config.pt"
    # 4. a plain code-running pickle, handed to the fine-tune paths (and as a run folder's last.pt)
    torch.save({"model": Call(Path.touch, Path(mark("plain")))}, root / "plain.pt")
    files["plain"] = root / "plain.pt"
    run = root / "run" / "weights"
    run.mkdir(parents=True)
    torch.save({"model": Call(Path.touch, Path(mark("resume")))}, run / "last.pt")
    (root / "recipe.yaml").write_text(f"model: {root / 'plain.pt'}\nimgsz: 64\n")
    return {"root": root, "marks": marks, "data": data, "files": files, "run": root / "run"}


ROUTES = ["constructor", "autobackend", "dotted torch.storage", "dotted torch._utils", "dotted torch", "plain"]
COMMANDS = {
    "inspect": ["inspect", "{model}", "--imgsz", "64"],
    "prune": ["prune", "{model}", "--imgsz", "64", "--ratio", "0.3", "-o", "{out}/o.pt"],
    "export": ["export", "{model}", "--imgsz", "64", "-o", "{out}/o.onnx"],
    "eval": ["eval", "{model}", "--data", "{data}", "--imgsz", "64"],
    "bench": ["bench", "{model}", "--imgsz", "64", "--runs", "1", "--warmup", "0"],
    "sweep": ["sweep", "{model}", "--data", "{data}", "--imgsz", "64", "--targets", "0.5", "-o", "{out}/s"],
    "sensitivity": ["sensitivity", "{model}", "--data", "{data}", "--imgsz", "64", "-o", "{out}/a"],
    "finetune": ["finetune", "{model}", "--data", "{data}", "--imgsz", "64", "--epochs", "1", "-o", "{out}/f"],
}


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def _assert_refused(code: int, err: str, command: str, hostile, out: Path) -> None:
    err = err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"yoloprune {command}: error:"), err
    assert "Traceback" not in err
    assert not any(hostile["marks"].iterdir()), list(hostile["marks"].iterdir())
    assert not any(out.iterdir()), list(out.iterdir())


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("route", ROUTES)
def test_no_command_runs_what_a_checkpoint_names(route, command, hostile, tmp_path, capsys):
    model = hostile["files"][route]
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    argv = [a.format(model=model, data=hostile["data"], out=tmp_path) for a in COMMANDS[command]]
    code = _run(argv)
    _assert_refused(code, capsys.readouterr().err, command, hostile, tmp_path)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("route", ["config", "layer name", "yolov5 config argument"])
def test_a_stored_config_is_never_evaluated(route, hostile, tmp_path, capsys):
    if route.startswith("yolov5"):
        pytest.importorskip("yolov5")
    path = hostile["files"][route]
    with pytest.raises(ValueError, match=r"(activation|not a model layer class|argument).*"):
        yoloprune.load(path)
    code = _run(["inspect", str(path), "--imgsz", "64"])
    _assert_refused(code, capsys.readouterr().err, "inspect", hostile, tmp_path)


def test_the_python_api_refuses_each_route(hostile):
    for route in ROUTES:
        path = hostile["files"][route]
        with pytest.raises(UntrustedCheckpoint, match=r"names .+, which "):
            load_checkpoint(path)
        if route.startswith("dotted") or route == "plain":
            with pytest.raises(UntrustedCheckpoint):
                load_data(path)  # the tensors-only reader behind yoloprune.load and YOLOX files
        with pytest.raises(ValueError):
            yoloprune.load(path)
    assert not any(hostile["marks"].iterdir())


def test_recipe_and_resume_hand_nothing_to_full_unpickling(hostile, tmp_path, capsys):
    code = _run(["run", str(hostile["root"] / "recipe.yaml"), "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("yoloprune run: error:") and len(err.splitlines()) == 1, err
    assert "allow-list" in err
    code = _run(["finetune", "--resume", "--data", str(hostile["data"]), "-o", str(hostile["run"]), "--imgsz", "64"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "allow-list" in err and len(err.splitlines()) == 1, err
    assert not any(hostile["marks"].iterdir())


def test_a_trusted_load_is_the_only_way_to_run_it(hostile):
    load_checkpoint(hostile["files"]["plain"], trust=True)
    assert (hostile["marks"] / "plain").exists()
    (hostile["marks"] / "plain").unlink()


NOT_IMPORTED = """
import sys, torch, zipfile, pickle
from yoloprune.cli import main
path = sys.argv[1]
names = [("ultralytics.hub.session", "HUBTrainingSession"), ("yolov5.models.tf", "TFDetect"),
         ("ultralytics.utils.checks", "check_requirements"), ("email.mime.text", "MIMEText")]
torch.save({}, path + ".base")
for module, name in names:
    data = b"\\x80\\x02c" + f"{module}\\n{name}\\n".encode() + b")\\x81."
    with zipfile.ZipFile(path + ".base") as src, zipfile.ZipFile(path, "w") as dst:
        for n in src.namelist():
            dst.writestr(n, data if n.endswith("data.pkl") else src.read(n))
    before = set(sys.modules)
    code = main(["inspect", path, "--imgsz", "64"])
    print(module, code, module in set(sys.modules) - before)
"""


def test_the_allow_list_decides_from_names_before_importing(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", NOT_IMPORTED, str(tmp_path / "names.pt")], capture_output=True, text=True, timeout=300
    )
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows == [
        ["ultralytics.hub.session", "2", "False"],
        ["yolov5.models.tf", "2", "False"],
        ["ultralytics.utils.checks", "2", "False"],
        ["email.mime.text", "2", "False"],
    ], done.stderr[-2000:]


# ------------------------------------------------------------------------------------------- property test
MARK_DIR = Path(__file__).parent / ".never"  # never created: any payload that runs would create it

FORBIDDEN = [
    ("os", "system"),
    ("posix", "system"),
    ("subprocess", "check_call"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "open"),
    ("builtins", "__import__"),
    ("pathlib", "Path"),
    ("torch", "load"),
    ("torch.storage", "os.system"),
    ("torch._utils", "os.system"),
    ("ultralytics.nn.autobackend", "AutoBackend"),
    ("ultralytics.nn.tasks", "attempt_load_weights"),
    ("ultralytics.nn.tasks", "torch_safe_load"),
    ("ultralytics.nn.tasks", "yaml_model_load"),
    ("numpy", "load"),
    ("functools", "partial"),
    ("operator", "attrgetter"),
]
ALLOWED = [
    ("collections", "OrderedDict"),
    ("builtins", "getattr"),
    ("builtins", "object"),
    ("builtins", "set"),
    ("copyreg", "_reconstructor"),
    ("copyreg", "__newobj__"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch.nn.modules.conv", "Conv2d"),
    ("torch.nn.modules.activation", "SiLU"),
    ("ultralytics.nn.tasks", "DetectionModel"),
    ("ultralytics.nn.modules.conv", "Conv"),
    ("ultralytics.nn.modules.head", "Detect"),
    ("ultralytics.utils", "IterableSimpleNamespace"),
    ("types", "SimpleNamespace"),
    ("pathlib", "PosixPath"),
    ("numpy", "dtype"),
    ("torch", "device"),
    ("torch", "Size"),
]
STRINGS = [
    f"touch {MARK_DIR}",
    str(MARK_DIR),
    f"__import__('os').mkdir({str(MARK_DIR)!r})",
    "touch",
    "mkdir",
    "forward",
    "system",
    "__class__",
    "__init__",
    "w",
    "yolov8n.yaml",
]


def _global(module: str, name: str, proto4: bool) -> bytes:
    if proto4:
        return _push_str(module) + _push_str(name) + pickle.STACK_GLOBAL
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _push_str(text: str) -> bytes:
    raw = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw


leaf = st.one_of(
    st.sampled_from(STRINGS).map(lambda s: ("str", s)),
    st.integers(-2, 3).map(lambda i: ("int", i)),
    st.just(("none",)),
    st.sampled_from(FORBIDDEN + ALLOWED).map(lambda g: ("global", g)),
)


def _extend(children):
    args = st.lists(children, max_size=3)
    return st.one_of(
        st.tuples(st.just("call"), children, args),  # REDUCE
        st.tuples(st.just("newobj"), children, args),  # NEWOBJ
        st.tuples(st.just("build"), children, st.dictionaries(st.sampled_from(STRINGS), children, max_size=2)),
        st.tuples(st.just("list"), args),  # EMPTY_LIST + APPENDS
        st.tuples(st.just("dict"), st.lists(st.tuples(children, children), max_size=2)),  # SETITEMS
        st.tuples(st.just("inst"), st.sampled_from(FORBIDDEN + ALLOWED), args),  # INST
        st.tuples(st.just("setitem_on"), children, children, children),  # SETITEM on any object
        st.tuples(st.just("append_on"), children, children),  # APPEND on any object
    )


program = st.recursive(leaf, _extend, max_leaves=12)


def _emit(node, proto4: bool) -> bytes:
    kind = node[0]
    if kind == "str":
        return _push_str(node[1])
    if kind == "int":
        return pickle.BININT + node[1].to_bytes(4, "little", signed=True)
    if kind == "none":
        return pickle.NONE
    if kind == "global":
        return _global(*node[1], proto4)
    if kind in ("call", "newobj"):
        body = _emit(node[1], proto4) + pickle.MARK + b"".join(_emit(a, proto4) for a in node[2]) + pickle.TUPLE
        return body + (pickle.REDUCE if kind == "call" else pickle.NEWOBJ)
    if kind == "build":
        items = b"".join(_emit(("str", k), proto4) + _emit(v, proto4) for k, v in node[2].items())
        return _emit(node[1], proto4) + pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS + pickle.BUILD
    if kind == "list":
        return pickle.EMPTY_LIST + pickle.MARK + b"".join(_emit(a, proto4) for a in node[1]) + pickle.APPENDS
    if kind == "dict":
        items = b"".join(_emit(k, proto4) + _emit(v, proto4) for k, v in node[1])
        return pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS
    if kind == "inst":
        module, name = node[1]
        args = b"".join(_emit(a, proto4) for a in node[2])
        return pickle.MARK + args + pickle.INST + f"{module}\n{name}\n".encode()
    if kind == "setitem_on":
        return b"".join(_emit(n, proto4) for n in node[1:]) + pickle.SETITEM
    if kind == "append_on":
        return _emit(node[1], proto4) + _emit(node[2], proto4) + pickle.APPEND
    raise AssertionError(kind)


WRITES = set("wax+")
CODE_EVENTS = ("exec", "compile", "os.system", "subprocess.Popen", "os.mkdir", "os.exec", "os.posix_spawn")


class _Audit:
    """Records the events that mean code ran: an exec/compile of source, a process, a file opened for writing."""

    active = False
    events: ClassVar[list[tuple[str, str]]] = []

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if not cls.active:
            return
        writes = event == "open" and len(args) > 1 and isinstance(args[1], str) and bool(set(args[1]) & WRITES)
        if event in CODE_EVENTS or writes:
            cls.events.append((event, repr(args)[:80]))


sys.addaudithook(_Audit.hook)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program, st.booleans())
def test_generated_pickles_run_nothing(node, proto4):
    import ultralytics.nn.tasks  # noqa: F401  (allowed modules may be imported; nothing else may be)

    data = (b"\x80\x04" if proto4 else b"\x80\x02") + _emit(node, proto4) + pickle.STOP
    before = set(sys.modules)
    _Audit.events.clear()
    _Audit.active = True
    try:
        SafeUnpickler(io.BytesIO(data)).load()
    except Exception:  # refusals and malformed streams alike: only what ran matters
        pass
    finally:
        _Audit.active = False
    new = {m for m in set(sys.modules) - before if not m.startswith(("ultralytics.nn", "torch.nn", "numpy"))}
    assert not _Audit.events and not new, (_Audit.events, new)
    assert not MARK_DIR.exists()


# ------------------------------------------------------------------------------ red-team findings, each closed
def _anchor_section(family: str, cfg: dict) -> dict:
    return {"yoloprune": {"format": 1, "family": family, "config": cfg, "plan": {"removed": {}}, "state_dict": {}}}


@pytest.mark.parametrize("family", ["yolov5", "yolov7"])
def test_a_config_cannot_name_a_whole_model_with_a_nested_config(family, tmp_path):
    """``Model({...})`` in a YOLOv5/v7 config would build a second model from an unchecked inner config."""
    pytest.importorskip(family)
    adapter = __import__(f"yoloprune.adapters.{family}", fromlist=["from_config"])
    base = "yolov5n.yaml" if family == "yolov5" else str(Path(__file__).parent / "family_configs" / "yolov7-tiny.yaml")
    cfg = {k: v for k, v in adapter.from_config(base).yaml.items() if k != "yoloprune"}
    mark = tmp_path / "nested"
    inner = {
        "nc": 1,
        "depth_multiple": 1.0,
        "width_multiple": 1.0,
        "anchors": 3,
        "backbone": [],
        "head": [],
        "activation": f"__import__('pathlib').Path({str(mark)!r}).touch()",
    }
    for where, evil in (("activation", f"Model({inner!r})"), ("argument", f"Model({inner!r})")):
        bad = (
            {**cfg, "activation": evil}
            if where == "activation"
            else {**cfg, "backbone": [[*cfg["backbone"][0][:3], [*cfg["backbone"][0][3], evil]], *cfg["backbone"][1:]]}
        )
        path = tmp_path / f"{where}.pt"
        torch.save(_anchor_section(family, bad), path)
        with pytest.raises(ValueError, match=r"activation|argument"):
            yoloprune.load(path)
    assert not mark.exists()


def test_a_tiny_file_cannot_expand_into_a_huge_tensor(tmp_path):
    weight = torch.zeros(1).expand(4096, 4096)  # stride 0: 4 bytes on disk, 64 MiB once made contiguous
    torch.save({"w": weight}, tmp_path / "expand.pt")
    with pytest.raises(UntrustedCheckpoint, match="a view larger than its storage"):
        load_checkpoint(tmp_path / "expand.pt")
    view = torch.arange(12.0)[2:8]  # an ordinary view into a larger storage still loads
    torch.save({"v": view}, tmp_path / "view.pt")
    assert load_checkpoint(tmp_path / "view.pt")["v"].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


def test_a_crafted_section_size_is_refused_before_allocating(tmp_path):
    cfg = {k: v for k, v in from_config("yolov8n.yaml").yaml.items() if k != "yoloprune"}
    for size in (10**6, -3, "640"):
        path = tmp_path / "size.pt"
        torch.save(
            {
                "yoloprune": {
                    "format": 1,
                    "family": "ultralytics",
                    "config": cfg,
                    "imgsz": size,
                    "plan": {"removed": {}},
                    "state_dict": {},
                }
            },
            path,
        )
        with pytest.raises(ValueError, match="imgsz"):
            yoloprune.load(path)


def test_cycles_hooks_and_replaced_forwards_are_refused(tmp_path):
    net = from_config("yolov8n.yaml")
    cyclic = from_config("yolov8n.yaml")
    cyclic.model[0]._modules["loop"] = cyclic.model[0]
    hooked = from_config("yolov8n.yaml")
    hooked.model[0].register_forward_pre_hook(torch.nn.Identity())
    replaced = from_config("yolov8n.yaml")
    replaced.model[1].__dict__["forward"] = torch.nn.Sequential()  # as a crafted BUILD state would set it
    cases = {
        "cycle": (cyclic, "contains itself"),
        "hook": (hooked, "holds hooks"),
        "forward": (replaced, "own methods"),
    }
    for name, (model, message) in cases.items():
        torch.save({"model": model}, tmp_path / f"{name}.pt")
        with pytest.raises(UntrustedCheckpoint, match=message):
            load_checkpoint(tmp_path / f"{name}.pt")
    torch.save({"model": net}, tmp_path / "plain.pt")
    assert type(load_checkpoint(tmp_path / "plain.pt")["model"]).__name__ == "DetectionModel"


def test_numpy_arrays_load_and_object_arrays_do_not(tmp_path):
    import numpy as np

    torch.save({"a": np.arange(3, dtype=np.float32), "s": np.float64(2.5)}, tmp_path / "np.pt")
    data = load_checkpoint(tmp_path / "np.pt")
    assert data["a"].tolist() == [0.0, 1.0, 2.0] and data["s"] == 2.5
    assert load_data(tmp_path / "np.pt")["a"].tolist() == [0.0, 1.0, 2.0]
    torch.save({"o": np.array([Call(print, "x")], dtype=object)}, tmp_path / "obj.pt")
    with pytest.raises(UntrustedCheckpoint):
        load_checkpoint(tmp_path / "obj.pt")
