"""A restricted unpickler: checkpoints become tensors, plain data and allow-listed model classes, and nothing else runs.

Unpickling calls whatever the file names (a REDUCE opcode calls any global with any arguments), so an allow-list of
*names* is not enough: a file may call an allowed class with arguments of its choosing. This unpickler never hands the
file a callable. Every global the file names becomes a ``_Ref`` token, and each opcode that would call something
decides from the token's kind what may happen:

- ``FUNCTION``: torch's and numpy's tensor/array rebuilders and a few plain-value builders (``OrderedDict``,
  ``set``, ``torch.Size``, ...), called with the file's arguments (they build data from data).
- ``CLASS``: an ``nn.Module`` (or plain data holder) class of an allow-listed module. It is only ever created empty
  (``cls.__new__(cls)``) and filled with a dict of attributes (BUILD): no constructor runs.
- ``VALUE_CLASS``: a class whose instances are values (paths, enum members), built from strings or numbers only.
- ``GETATTR``: ``getattr(model class or module, name)`` for the methods old checkpoints pickle (``Detect.forward``).

A module is imported only when its name is on the allow-list (no import on the file's say-so), names are looked up
exactly (no dotted paths), APPEND/SETITEM work only on real lists, dicts and sets, and after loading the object graph
is walked: a token, class or function left anywhere in it is refused. With ``opaque=True`` no module is imported at
all and every class becomes an inert ``Opaque`` placeholder (reading tensors and plain data only).
"""

from __future__ import annotations

import _compat_pickle
import ast
import collections
import enum
import importlib
import io
import pathlib
import pickle
import sys
import types
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

# -------------------------------------------------------------------------------------------- what may be named
TORCH_REBUILDERS = {
    "_rebuild_tensor": None,
    "_rebuild_tensor_v2": 5,
    "_rebuild_tensor_v3": 5,
    "_rebuild_parameter": 2,
    "_rebuild_parameter_with_state": 2,
    "_rebuild_qtensor": 6,
    "_rebuild_meta_tensor_no_storage": None,
    "_rebuild_device_tensor_from_numpy": None,
    "_rebuild_device_tensor_from_cpu_tensor": None,
}
"""torch's tensor rebuilders, with the position of their ``backward_hooks`` argument (hooks are code: must be empty)."""

SPARSE_REBUILDERS = ("_rebuild_sparse_tensor",)
"""torch's sparse tensor rebuilders, always refused: torch checks a sparse tensor's indices only when loading with
``weights_only=True``, so out-of-range indices would reach ``to_dense()`` and write out of bounds. No YOLO checkpoint
holds a sparse tensor."""

MODEL_MODULES: dict[str, tuple[str, ...]] = {
    "ultralytics": (
        "ultralytics.nn.tasks",
        "ultralytics.nn.modules",
        "ultralytics.nn.modules.activation",
        "ultralytics.nn.modules.block",
        "ultralytics.nn.modules.conv",
        "ultralytics.nn.modules.head",
        "ultralytics.nn.modules.transformer",
        "ultralytics.nn.modules.utils",
    ),
    "yolov5": tuple(f"yolov5.models.{m}" for m in ("yolo", "common", "experimental")),
    "yolov7": tuple(
        f"{p}.models.{m}" for p in ("yolov7", "yolov7_package") for m in ("yolo", "common", "experimental")
    ),
    "yolox": tuple(
        f"yolox.models.{m}"
        for m in ("yolox", "yolo_pafpn", "yolo_fpn", "yolo_head", "darknet", "network_blocks", "losses")
    ),
}
"""The modules whose ``nn.Module`` classes a checkpoint may name, by family. Only these are ever imported."""

DATA_MODULES = (
    "ultralytics.utils.loss",
    "ultralytics.utils.tal",
    "yolov5.utils.loss",
    "yolov7.utils.loss",
)
"""Modules whose plain classes (loss objects a trainer leaves on the model) may be named: created empty, filled with
attributes."""

DATA_CLASSES = {
    "types.SimpleNamespace": types.SimpleNamespace,
    "argparse.Namespace": None,  # resolved lazily below (argparse is always importable)
    "ultralytics.utils.IterableSimpleNamespace": None,
    "torchvision.transforms.transforms.Compose": None,
    "torchvision.transforms.transforms.ToTensor": None,
    "torchvision.transforms.transforms.Normalize": None,
    "torchvision.transforms.transforms.Resize": None,
    "torchvision.transforms.transforms.CenterCrop": None,
}
"""Plain data holders a checkpoint may name (created empty, filled with attributes)."""

ALIASES = {
    "ultralytics.yolo.utils.IterableSimpleNamespace": "ultralytics.utils.IterableSimpleNamespace",
    "ultralytics.nn.tasks.YOLOv10DetectionModel": "ultralytics.nn.tasks.DetectionModel",
    "ultralytics.utils.loss.v10DetectLoss": "ultralytics.utils.loss.E2EDetectLoss",
    "ultralytics.nn.modules.block.Silence": "torch.nn.modules.linear.Identity",
    "pathlib._local.PosixPath": "pathlib.PosixPath",
    "pathlib._local.WindowsPath": "pathlib.WindowsPath",
    "numpy._core.multiarray.scalar": "numpy.core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct": "numpy.core.multiarray._reconstruct",
}
"""Names older checkpoints use for classes that live elsewhere now."""

ENUM_MODULES = ("torchvision.transforms.functional",)
"""Modules whose ``enum.Enum`` classes a checkpoint may name (members are looked up, never created)."""

BOUND_METHODS = frozenset({"forward", "forward_fuse", "forward_split", "_forward_once", "_predict_once"})
"""Methods of a model instance that ``getattr(instance, name)`` may return (old checkpoints pickle bound forwards)."""

# ------------------------------------------------------------------------------------------------------- tokens
FUNCTION, CLASS, VALUE_CLASS, GETATTR, RECONSTRUCTOR, NEWOBJ_FN, OPAQUE = (
    "function",
    "class",
    "value class",
    "getattr",
    "reconstructor",
    "newobj",
    "opaque",
)


class _Ref:
    """A global the file named, standing in for it on the unpickler's stack. Not callable, not usable as data."""

    __slots__ = ("kind", "name", "obj")

    def __init__(self, kind: str, name: str, obj: Any = None):
        self.kind, self.name, self.obj = kind, name, obj

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name}>"


class Opaque:
    """Stands in for every object of a class the file names when reading plain data only (``opaque=True``)."""

    def __init__(self, name: str = "?"):
        self.name = name

    def __repr__(self) -> str:
        return f"<opaque {self.name}>"


class ForbiddenGlobal(pickle.UnpicklingError):
    """The file names (or tries to call) something outside the allow-list."""

    def __init__(self, name: str, why: str = "is not on yoloprune's allow-list", trust_helps: bool = True):
        super().__init__(f"{name}, which {why}")
        self.name, self.trust_helps = name, trust_helps


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, complex, str, bytes))


def _byte_list(value: Any) -> bool:
    return isinstance(value, list) and all(type(b) is int and 0 <= b < 256 for b in value)


def _check_args(name: str, args: tuple, test: Any) -> None:
    if not all(test(a) for a in args):
        raise ForbiddenGlobal(name, "was called with arguments it may not take")


def _value_builders() -> dict[str, tuple[Any, Any]]:
    """Plain-value builders: name -> (callable, argument test)."""

    def seq(a: Any) -> bool:
        return isinstance(a, (list, tuple, set, frozenset))

    builders: dict[str, tuple[Any, Any]] = {
        "collections.OrderedDict": (collections.OrderedDict, lambda a: seq(a) or isinstance(a, dict)),
        "collections.Counter": (collections.Counter, lambda a: seq(a) or isinstance(a, dict)),
        "builtins.set": (set, seq),
        "builtins.frozenset": (frozenset, seq),
        "builtins.slice": (slice, lambda a: a is None or isinstance(a, int)),
        "builtins.complex": (complex, lambda a: isinstance(a, (int, float))),
        "builtins.bytearray": (bytearray, lambda a: isinstance(a, (bytes, str)) or _byte_list(a)),
        "builtins.range": (range, lambda a: isinstance(a, int)),
        "_codecs.encode": (_latin1, lambda a: isinstance(a, str)),
        "torch.Size": (torch.Size, lambda a: seq(a) and all(isinstance(i, int) for i in a)),
        "torch.device": (torch.device, lambda a: isinstance(a, (str, int))),
        "torch.serialization._get_layout": (torch.serialization._get_layout, lambda a: isinstance(a, str)),
    }
    for name, hooks in TORCH_REBUILDERS.items():
        fn = getattr(torch._utils, name, None)
        if fn is not None:
            builders[f"torch._utils.{name}"] = (_without_hooks(fn, name, hooks), lambda a: True)
    for name in SPARSE_REBUILDERS:
        builders[f"torch._utils.{name}"] = (_refuse_sparse(name), lambda a: True)
    try:
        import numpy as np
        from numpy.core.multiarray import _reconstruct, scalar  # numpy 1.x and 2.x both expose these
    except ImportError:  # pragma: no cover - numpy is a dependency
        return builders
    builders["numpy.core.multiarray._reconstruct"] = (_numpy_reconstruct(_reconstruct), lambda a: True)
    builders["numpy.core.multiarray.scalar"] = (scalar, lambda a: isinstance(a, (np.dtype, bytes, str)))
    builders["numpy.dtype"] = (_plain_dtype, lambda a: isinstance(a, (str, bool)))
    return builders


def _without_hooks(fn: Any, name: str, hooks: int | None) -> Any:
    """``fn`` refusing backward hooks (callables the tensor would run) and dunder attributes in a parameter's state."""

    def rebuild(*args: Any) -> Any:
        if hooks is not None and len(args) > hooks and args[hooks]:
            raise ForbiddenGlobal(f"torch._utils.{name}", "may not attach backward hooks")
        if name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_qtensor"):
            _check_view(name, *args[:4])
        if name == "_rebuild_parameter_with_state" and len(args) > 3:
            states = args[3] if isinstance(args[3], tuple) else (args[3],)
            for state in states:
                if state and (not isinstance(state, dict) or any(str(k).startswith("__") for k in state)):
                    raise ForbiddenGlobal(f"torch._utils.{name}", "may only set plain attributes")
        return fn(*args)

    return rebuild


def _refuse_sparse(name: str) -> Any:
    """A stand-in for a sparse rebuilder that refuses, whatever the arguments."""

    def refuse(*args: Any) -> Any:
        raise ForbiddenGlobal(
            f"torch._utils.{name}", "builds a sparse tensor; no YOLO checkpoint holds one", trust_helps=False
        )

    return refuse


def _check_view(name: str, storage: Any, offset: Any, size: Any, stride: Any) -> None:
    """A tensor view must fit in its storage without overlapping itself (no stride-0 expansion of a tiny file)."""
    try:
        elements = storage._size() if hasattr(storage, "_size") else storage.nbytes()  # typed: elements
        dims = [(int(n), int(st)) for n, st in zip(size, stride)]
        numel = 1
        for n, _ in dims:
            numel *= n
        span = int(offset) + sum((n - 1) * st for n, st in dims if n > 0) + 1 if numel else 0
        overlapping = any(st == 0 and n > 1 for n, st in dims) or any(n < 0 or st < 0 for n, st in dims)
    except (TypeError, ValueError) as exc:
        raise ForbiddenGlobal(f"torch._utils.{name}", f"was given a malformed view ({exc})") from None
    if overlapping or numel > elements or span > elements:
        raise ForbiddenGlobal(f"torch._utils.{name}", "was given a view larger than its storage")


def _latin1(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: latin-1 only (no codec lookup by name)."""
    if encoding not in ("latin1", "latin-1"):
        raise ForbiddenGlobal("_codecs.encode", f"with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


def _plain_dtype(*args: Any) -> Any:
    """``numpy.dtype(code, align, copy)`` as pickles call it, for dtypes that hold no Python objects."""
    import numpy as np

    if not args or not isinstance(args[0], str) or not all(isinstance(a, bool) for a in args[1:]):
        raise ForbiddenGlobal("numpy.dtype", "takes a type code and flags")
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise ForbiddenGlobal("numpy object dtypes", "may hold anything and are not allowed")
    return dtype


def _numpy_reconstruct(reconstruct: Any) -> Any:
    import numpy as np

    def build(cls: Any, shape: Any, dtype_code: Any) -> Any:
        if not (isinstance(cls, _Ref) and cls.name == "numpy.ndarray"):
            raise ForbiddenGlobal("numpy.core.multiarray._reconstruct", "may only rebuild numpy.ndarray")
        return reconstruct(np.ndarray, shape, dtype_code)

    return build


_BUILDERS: dict[str, tuple[Any, Any]] | None = None


def _builders() -> dict[str, tuple[Any, Any]]:
    global _BUILDERS
    if _BUILDERS is None:
        _BUILDERS = _value_builders()
    return _BUILDERS


# ------------------------------------------------------------------------------------------------- resolution
def _import_listed(module: str, listed: Iterable[str]) -> types.ModuleType | None:
    """Import ``module`` only if it is on the list (or already imported as one of torch.nn's modules)."""
    if module in listed or (module.startswith("torch.nn.modules.") and module in sys.modules):
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            raise ForbiddenGlobal(module, f"cannot be imported here ({exc}); install the family's package") from None
    return None


class Policy:
    """What a load may name: the families' model modules, plus ``remap`` (bare clone names onto a package) and
    ``extra_roots`` (module roots trusted by the user, such as a clone's ``models`` given with ``--repo``)."""

    def __init__(self, remap: Mapping[str, str] | None = None, extra_roots: tuple[str, ...] = ()):
        self.remap = dict(remap or {})
        self.extra_roots = extra_roots
        self.model_modules = {m for group in MODEL_MODULES.values() for m in group}
        for root in extra_roots:
            self.model_modules |= {f"{root}.{m}" for m in ("yolo", "common", "experimental")}
        self.data_modules = set(DATA_MODULES) | {f"{root}.loss" for root in extra_roots}

    def rename(self, module: str) -> str:
        root = module.split(".")[0]
        if root in self.remap:
            return self.remap[root] + module[len(root) :]
        return module

    def resolve(self, module: str, name: str) -> _Ref | Any:
        """The token (or, for inert values such as dtypes, the value) for ``module.name``."""
        if not name.isidentifier() or not all(part.isidentifier() for part in module.split(".")):
            raise ForbiddenGlobal(f"{module}.{name}", "is not a plain global name")
        full = ALIASES.get(f"{module}.{name}", f"{module}.{name}")
        builder = _builders().get(full)
        if builder is not None:
            return _Ref(FUNCTION, full, builder)
        if full in ("copyreg._reconstructor",):
            return _Ref(RECONSTRUCTOR, full)
        if full == "copyreg.__newobj__":
            return _Ref(NEWOBJ_FN, full)
        if full == "builtins.getattr":
            return _Ref(GETATTR, full)
        if full == "builtins.object":
            return _Ref(CLASS, full, object)
        if full == "numpy.ndarray":
            return _Ref(VALUE_CLASS, full, None)  # only ``_reconstruct`` accepts it; calling it is refused
        value = _torch_value(full)
        if value is not None:
            return value
        if full in ("pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath"):
            local = pathlib.PurePosixPath if "Pure" in full else pathlib.Path
            return _Ref(VALUE_CLASS, full, local)
        module, _, name = full.rpartition(".")
        if full in DATA_CLASSES:
            return _Ref(CLASS, full, self._data_class(full))
        module = self.rename(module)
        mod = _import_listed(module, self.model_modules)
        if mod is not None:
            cls = getattr(mod, name, None)
            if cls is None:
                why = f"the installed {module.split('.')[0]} has not got (another version, or a clone's own module: "
                raise ForbiddenGlobal(full, why + "pass --repo CLONE)", trust_helps=False)
            if isinstance(cls, type) and issubclass(cls, nn.Module) and self._listed_origin(cls):
                return _Ref(CLASS, full, cls)
            raise ForbiddenGlobal(full, "is not a model layer class")
        mod = _import_listed(module, self.data_modules)
        if mod is not None:
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and cls.__module__ == module and cls.__new__ is object.__new__:
                return _Ref(CLASS, full, cls)
            raise ForbiddenGlobal(full, "is not a plain data class")
        mod = _import_listed(module, ENUM_MODULES)
        if mod is not None:
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, enum.Enum):
                return _Ref(VALUE_CLASS, full, cls)
        raise ForbiddenGlobal(full)

    def _listed_origin(self, cls: type) -> bool:
        origin = cls.__module__
        return origin in self.model_modules or origin.startswith("torch.nn.modules.")

    @staticmethod
    def _data_class(full: str) -> type:
        module, _, name = full.rpartition(".")
        cls = DATA_CLASSES.get(full) or getattr(importlib.import_module(module), name)
        return cls


def _torch_value(full: str) -> Any:
    """Inert torch values a pickle names: dtypes, qschemes, layouts, storage classes (used only as data)."""
    module, _, name = full.rpartition(".")
    if module in ("torch", "torch.storage"):
        obj = getattr(torch, name, None)
        if isinstance(obj, (torch.dtype, torch.qscheme, torch.layout)):
            return obj
        if name in ("UntypedStorage", "TypedStorage") or (name.endswith("Storage") and isinstance(obj, type)):
            return obj
    return None


# --------------------------------------------------------------------------------------------- the unpickler
_WORK = pickle._Unpickler  # the pure-Python unpickler, whose opcodes can be overridden one by one


class SafeUnpickler(_WORK):  # type: ignore[misc, valid-type]
    """``pickle._Unpickler`` with every opcode that can call code replaced (see the module docstring)."""

    policy: Policy = Policy()
    opaque: bool = False
    tensors: bool = True  # False: tensors are left out (None), as when reading names only
    seen: list[str] | None = None

    def __init__(self, file: Any, *args: Any, **kwargs: Any):
        super().__init__(file, *args, **kwargs)
        self._made: dict[int, Any] = {}  # objects this unpickler created from CLASS tokens, by id (kept alive)
        self._methods: set[int] = set()  # ids of functions returned by an allowed getattr

    # --- naming
    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        if self.seen is not None:
            self.seen.append(f"{module}.{name}")
        if "." in name:  # protocol 4 qualified names: only Class.method of an allowed class
            owner, _, attr = name.partition(".")
            ref = self.find_class(module, owner)
            return self._getattr(ref, attr)
        if self.opaque:
            full = f"{module}.{name}"
            builder = _builders().get(ALIASES.get(full, full))
            if builder is not None:
                return _Ref(FUNCTION, full, builder)
            if full == "numpy.ndarray":
                return _Ref(VALUE_CLASS, full, None)
            value = _torch_value(full)
            return value if value is not None else _Ref(OPAQUE, full)
        return self.policy.resolve(module, name)

    # --- calls
    def _call(self, func: Any, args: Any) -> Any:
        if not isinstance(func, _Ref) or not isinstance(args, tuple):
            raise ForbiddenGlobal(type(func).__name__, "cannot be called while loading")
        kind = func.kind
        if kind == OPAQUE:
            return Opaque(func.name)
        if kind == FUNCTION:
            if not self.tensors and func.name.startswith("torch._utils."):
                return None
            fn, test = func.obj
            _check_args(func.name, args, test)
            return fn(*args)
        if kind == CLASS:
            if args:
                raise ForbiddenGlobal(func.name, "may only be created empty (no constructor arguments)")
            return self._new(func)
        if kind == VALUE_CLASS:
            if func.obj is None:
                raise ForbiddenGlobal(func.name, "cannot be called while loading")
            _check_args(func.name, args, _plain)
            return func.obj(*args)
        if kind == RECONSTRUCTOR:  # copyreg._reconstructor(cls, object, None): protocol 0/1 objects
            if len(args) == 3 and isinstance(args[0], _Ref) and args[1] is not None and args[2] is None:
                base = args[1]
                if isinstance(base, _Ref) and base.obj is object:
                    return self._new(args[0])
            raise ForbiddenGlobal(func.name, "may only create plain objects")
        if kind == NEWOBJ_FN:
            if len(args) == 1 and isinstance(args[0], _Ref):
                return self._new(args[0])
            raise ForbiddenGlobal(func.name, "may only create objects without arguments")
        if kind == GETATTR:
            if len(args) == 2 and isinstance(args[1], str):
                return self._getattr(args[0], args[1])
            raise ForbiddenGlobal("builtins.getattr", "takes an object and a name")
        raise ForbiddenGlobal(func.name, "cannot be called")

    def _new(self, ref: Any) -> Any:
        if not isinstance(ref, _Ref):
            raise ForbiddenGlobal(type(ref).__name__, "is not a class the file may create")
        if ref.kind == OPAQUE:
            return Opaque(ref.name)
        if ref.kind != CLASS or ref.obj is object:
            raise ForbiddenGlobal(ref.name, "cannot be created while loading")
        cls = ref.obj
        if cls.__new__ is not object.__new__ and not issubclass(cls, types.SimpleNamespace):
            raise ForbiddenGlobal(ref.name, "has its own __new__ and cannot be created while loading")
        obj = cls.__new__(cls)
        self._made[id(obj)] = obj
        return obj

    def _getattr(self, owner: Any, name: str) -> Any:
        if self.opaque and (isinstance(owner, Opaque) or (isinstance(owner, _Ref) and owner.kind == OPAQUE)):
            return Opaque(f"{getattr(owner, 'name', '?')}.{name}")
        if not name.isidentifier() or name.startswith("__"):
            raise ForbiddenGlobal(f"getattr(..., {name!r})", "is not allowed")
        if isinstance(owner, _Ref) and owner.kind == VALUE_CLASS and issubclass(owner.obj, enum.Enum):
            member = owner.obj.__members__.get(name)
            if member is None:
                raise ForbiddenGlobal(f"{owner.name}.{name}", "is not a member of that enum")
            return member
        is_class = isinstance(owner, _Ref) and owner.kind == CLASS and issubclass(owner.obj, nn.Module)
        if is_class and name in BOUND_METHODS:
            fn = getattr(owner.obj, name, None)
            if isinstance(fn, types.FunctionType):
                self._methods.add(id(fn))
                return fn
        if isinstance(owner, nn.Module) and id(owner) in self._made and name in BOUND_METHODS:
            method = getattr(type(owner), name, None)
            if isinstance(method, types.FunctionType):
                bound = types.MethodType(method, owner)
                self._methods.add(id(bound))
                return bound
        raise ForbiddenGlobal(f"getattr({type(owner).__name__}, {name!r})", "is not allowed")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._newobj(cls, args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if kwargs:
            raise ForbiddenGlobal(getattr(cls, "name", "?"), "may only be created without arguments")
        self.append(self._newobj(cls, args))

    def _newobj(self, cls: Any, args: Any) -> Any:
        if isinstance(cls, _Ref) and cls.kind == CLASS and cls.obj is not object and args == ():
            return self._new(cls)
        if isinstance(cls, _Ref) and cls.kind in (CLASS, VALUE_CLASS, FUNCTION, OPAQUE):
            return self._call(cls, tuple(args))
        raise ForbiddenGlobal(getattr(cls, "name", type(cls).__name__), "cannot be created while loading")

    def load_inst(self) -> None:
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        cls = self.find_class(module, name)
        self.append(self._call(cls, tuple(self.pop_mark())))

    def load_obj(self) -> None:
        args = self.pop_mark()
        cls = args.pop(0)
        self.append(self._call(cls, tuple(args)))

    # --- filling objects
    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Opaque):
            return
        if id(inst) in self._made:
            self._check_state(inst, state)
            setstate = getattr(type(inst), "__setstate__", None)
            owner = next((c for c in type(inst).__mro__ if "__setstate__" in c.__dict__), object)
            if setstate is not None and owner is not object and self.policy._listed_origin(owner):
                setstate(inst, state)
            else:
                inst.__dict__.update(state)
            return
        if type(inst) is collections.OrderedDict and isinstance(state, dict) and all(isinstance(k, str) for k in state):
            inst.__dict__.update(state)  # a state_dict's ``_metadata``
            return
        if type(inst).__module__.split(".")[0] == "numpy" and isinstance(state, tuple):  # ndarray, dtype
            if any(getattr(item, "hasobject", False) for item in state):
                raise ForbiddenGlobal("numpy object arrays", "may hold anything and are not allowed")
            inst.__setstate__(state)
            return
        raise ForbiddenGlobal(type(inst).__qualname__, "cannot be filled while loading")

    def _check_state(self, inst: Any, state: Any) -> None:
        """A created object is filled with plain attributes only: no dunder names, no hooks (callables torch would
        run), and no replaced ``forward`` other than one of the object's own methods."""
        name = type(inst).__qualname__
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise ForbiddenGlobal(name, "may only be filled with a dict of attributes")
        for key, value in state.items():
            if key.startswith("__"):
                raise ForbiddenGlobal(f"{name}.{key}", "is not an attribute a file may set")
            if "hooks" in key and value:
                raise ForbiddenGlobal(f"{name}.{key}", "holds hooks, which are code a file may not attach")
            if key in BOUND_METHODS and id(value) not in self._methods:
                raise ForbiddenGlobal(f"{name}.{key}", "may only be one of the layer's own methods")
        if isinstance(inst, nn.Module):
            for key, kind in (("_modules", nn.Module), ("_parameters", torch.Tensor), ("_buffers", torch.Tensor)):
                values = state.get(key) or {}
                if not isinstance(values, dict) or not all(v is None or isinstance(v, kind) for v in values.values()):
                    raise ForbiddenGlobal(f"{name}.{key}", f"must map names to {kind.__name__} objects")

    def load_ext(self) -> None:
        raise ForbiddenGlobal("a pickle extension code (EXT1/EXT2/EXT4)", "checkpoints never use", trust_helps=False)

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target(list).append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target(list).extend(items)

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._target(dict)[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target(dict)
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._target(set).update(items)

    def _target(self, kind: type) -> Any:
        obj = self.stack[-1]
        if type(obj) is kind or (kind is dict and type(obj) in (collections.OrderedDict, collections.Counter)):
            return obj
        if isinstance(obj, Opaque):
            return {} if kind is dict else kind()
        raise ForbiddenGlobal(type(obj).__qualname__, f"cannot take {kind.__name__} items while loading")

    dispatch: ClassVar[dict[int, Any]] = dict(_WORK.dispatch)
    for _op, _fn in (
        (pickle.REDUCE, load_reduce),
        (pickle.NEWOBJ, load_newobj),
        (pickle.NEWOBJ_EX, load_newobj_ex),
        (pickle.INST, load_inst),
        (pickle.OBJ, load_obj),
        (pickle.BUILD, load_build),
        (pickle.APPEND, load_append),
        (pickle.APPENDS, load_appends),
        (pickle.SETITEM, load_setitem),
        (pickle.SETITEMS, load_setitems),
        (pickle.ADDITEMS, load_additems),
        (pickle.EXT1, load_ext),
        (pickle.EXT2, load_ext),
        (pickle.EXT4, load_ext),
    ):
        dispatch[_op[0]] = _fn
    del _op, _fn

    def load(self) -> Any:
        result = super().load()
        _check_graph(result, self._methods, self.opaque)
        _check_module_tree([m for m in self._made.values() if isinstance(m, nn.Module)])
        return result


def _check_graph(root: Any, methods: set[int], opaque: bool) -> None:
    """Refuse a loaded object graph that holds a token, a class or a function anywhere (they can only get there
    by a file placing a global where data belongs)."""
    stack, seen = [root], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen or _plain(obj) or isinstance(obj, torch.Tensor):
            continue
        seen.add(id(obj))
        if isinstance(obj, _Ref):
            if opaque and obj.kind == OPAQUE:
                continue
            raise ForbiddenGlobal(obj.name, "appears where data belongs")
        if isinstance(obj, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
            if id(obj) in methods:
                continue
            raise ForbiddenGlobal(getattr(obj, "__qualname__", "a function"), "appears where data belongs")
        if isinstance(obj, type):
            if obj.__module__.startswith("torch") and obj.__name__.endswith("Storage"):
                continue
            raise ForbiddenGlobal(obj.__qualname__, "appears where data belongs")
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.dtype, torch.device, enum.Enum)):
            stack.extend(vars(obj).values())


def _check_module_tree(modules: list[nn.Module]) -> None:
    """Refuse a module that contains itself (``_modules`` cycles make every later walk recurse forever)."""
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for root in modules:
        if state.get(id(root)):
            continue
        stack = [(root, iter(root._modules.values()))]
        state[id(root)] = 1
        while stack:
            module, children = stack[-1]
            child = next(children, None)
            while child is not None and state.get(id(child)) == 2:
                child = next(children, None)
            if child is None:
                state[id(module)] = 2
                stack.pop()
            elif state.get(id(child)) == 1:
                raise ForbiddenGlobal(type(child).__qualname__, "contains itself (a cycle of modules)")
            else:
                state[id(child)] = 1
                stack.append((child, iter(child._modules.values())))


# ------------------------------------------------------------------------------------------------------ entry
def pickle_module(policy: Policy | None = None, opaque: bool = False, seen: list[str] | None = None) -> Any:
    """A ``pickle_module`` for ``torch.load(..., weights_only=False)`` that unpickles through ``SafeUnpickler``."""
    unpickler = type("Unpickler", (SafeUnpickler,), {"policy": policy or Policy(), "opaque": opaque, "seen": seen})
    mod = types.ModuleType("yoloprune_safe_pickle")
    mod.Unpickler = unpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: unpickler(f, **kw).load()  # type: ignore[attr-defined]
    mod.__name__ = "yoloprune.unpickle"
    return mod


def torch_load(path: Any, policy: Policy | None = None, opaque: bool = False) -> Any:
    """``torch.load`` of a zip checkpoint through the restricted unpickler (tensors on the CPU)."""
    if not zipfile.is_zipfile(path):
        raise pickle.UnpicklingError("not a zip-format checkpoint (torch >= 1.6)")
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=pickle_module(policy, opaque))


def names_in(path: Any) -> tuple[Any, list[str]]:
    """The plain data of a checkpoint with tensors left out (None) and every global it names, read without importing
    or creating anything."""
    seen: list[str] = []
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
        reader = type("Unpickler", (SafeUnpickler,), {"opaque": True, "tensors": False, "seen": seen})
        unpickler = reader(io.BytesIO(archive.read(name)))
    unpickler.persistent_load = lambda pid: None
    return unpickler.load(), seen


def literal_call(text: str, allowed: Mapping[str, Any]) -> Any:
    """Parse ``Name(scalar, ...)`` or ``nn.Name(...)``/``torch.nn.Name(...)`` without evaluating anything; return
    (class, args, kwargs) when the name is an ``nn.Module`` class found in ``allowed`` or torch.nn and every argument
    is a number, string, boolean or None, else None."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call):
        return None
    parts, func = [], node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    parts.append(func.id)
    parts.reverse()
    if parts[:-1] in (["nn"], ["torch", "nn"]):
        cls = getattr(nn, parts[-1], None)
    elif len(parts) == 1:
        cls = allowed.get(parts[0])
    else:
        return None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return None
    try:
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if len(kwargs) != len(node.keywords) or not all(_plain(v) for v in (*args, *kwargs.values())):
        return None  # scalars only: a dict or list could be a whole model config
    return cls, args, kwargs


__all__ = [
    "ForbiddenGlobal",
    "Opaque",
    "Policy",
    "SafeUnpickler",
    "literal_call",
    "names_in",
    "pickle_module",
    "torch_load",
]
