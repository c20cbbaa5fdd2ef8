"""Read a checkpoint's data.pkl without running it.

`pickletools.genops` only decodes opcodes; a small stack machine below rebuilds containers, strings and
numbers and turns torch's tensor recipes into plain records (storage key, dtype, shape, stride, offset).
Every global the pickle names is checked against the same allow-list as torch's `weights_only` loader, and
only the opcodes that loader accepts are accepted, so a file passes here exactly when
`torch.load(weights_only=True)` would agree to read it - and nothing in it is ever called.

Nothing the pickle builds is hashed, printed or walked recursively: a dict key or set element must be a
flat value (string, number, None, or a tuple of those), the only kind whose hash is linear in its size, so
a key nested a million deep or a tuple of itself repeated 2^60 times is refused before anything looks
inside it. Explicit budgets (opcodes, containers, memo entries, nesting, tensor dimensions, integer sizes),
each far above what a real checkpoint needs, bound time and memory: past one the pickle is refused with
the budget named.
"""

from __future__ import annotations

import _compat_pickle
import pickletools
from dataclasses import dataclass, field
from typing import Any

# Legacy storage classes name the element type of a storage. Bytes per element, and the dtype they hold.
STORAGE_DTYPES: dict[str, tuple[str, int]] = {
    "DoubleStorage": ("float64", 8),
    "FloatStorage": ("float32", 4),
    "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2),
    "LongStorage": ("int64", 8),
    "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2),
    "CharStorage": ("int8", 1),
    "ByteStorage": ("uint8", 1),
    "BoolStorage": ("bool", 1),
    "ComplexFloatStorage": ("complex64", 8),
    "ComplexDoubleStorage": ("complex128", 16),
    "QInt8Storage": ("qint8", 1),
    "QUInt8Storage": ("quint8", 1),
    "QInt32Storage": ("qint32", 4),
    "QUInt4x2Storage": ("quint4x2", 1),
    "QUInt2x4Storage": ("quint2x4", 1),
    "UntypedStorage": ("uint8", 1),
    "TypedStorage": ("uint8", 1),
}

_DTYPES = [
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "complex32",
    "complex64",
    "complex128",
    "qint8",
    "quint8",
    "qint32",
    "quint4x2",
    "quint2x4",
    "bits1x8",
    "bits2x4",
    "bits4x2",
    "bits8",
    "bits16",
    "float8_e5m2",
    "float8_e4m3fn",
    "float8_e5m2fnuz",
    "float8_e4m3fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
    "uint16",
    "uint32",
    "uint64",
    "uint1",
    "uint2",
    "uint3",
    "uint4",
    "uint5",
    "uint6",
    "uint7",
    "int1",
    "int2",
    "int3",
    "int4",
    "int5",
    "int6",
    "int7",
]
_TENSOR_CLASSES = ["Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool"]
_REBUILD_FUNCTIONS = [
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_qtensor",
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_sparse_tensor",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_nested_tensor",
    "_rebuild_wrapper_subclass",
    "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor",
]


def _allowed_globals() -> frozenset[str]:
    """Mirror of torch 2.9's `torch._weights_only_unpickler._get_allowed_globals()` (checked by a test)."""
    names = {
        "collections.OrderedDict",
        "collections.Counter",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.set",
        "builtins.complex",
        "torch._tensor._rebuild_from_type_v2",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
        "torch.per_tensor_affine",
        "torch.per_tensor_symmetric",
        "torch.per_channel_affine",
        "torch.per_channel_symmetric",
        "torch.per_channel_affine_float_qparams",
    }
    names.update(f"torch.{d}" for d in _DTYPES)
    names.update(f"torch._utils.{f}" for f in _REBUILD_FUNCTIONS)
    for cls in _TENSOR_CLASSES:
        names.update((f"torch.{cls}Tensor", f"torch.cuda.{cls}Tensor"))
        if cls != "Bool":
            names.update((f"torch.sparse.{cls}Tensor", f"torch.cuda.sparse.{cls}Tensor"))
    for storage in STORAGE_DTYPES:
        if storage not in ("UntypedStorage", "TypedStorage"):
            names.add(f"torch.{storage}")
            if not storage.startswith("Q"):
                names.add(f"torch.cuda.{storage}")
    return frozenset(names)


ALLOWED_GLOBALS = _allowed_globals()
# torch refuses these modules by name before anything else.
_BLOCKED_MODULES = ("sys", "os", "posix", "nt")
# Opcodes torch's weights_only unpickler implements (protocol 2 as torch.save writes it); it refuses the rest.
ALLOWED_OPCODES = frozenset(
    [
        "GLOBAL",
        "NEWOBJ",
        "REDUCE",
        "BUILD",
        "APPEND",
        "APPENDS",
        "SETITEM",
        "SETITEMS",
        "MARK",
        "TUPLE",
        "TUPLE1",
        "TUPLE2",
        "TUPLE3",
        "NONE",
        "NEWFALSE",
        "NEWTRUE",
        "EMPTY_TUPLE",
        "EMPTY_LIST",
        "EMPTY_DICT",
        "EMPTY_SET",
        "BININT",
        "BININT1",
        "BININT2",
        "BINFLOAT",
        "BINUNICODE",
        "SHORT_BINSTRING",
        "BINPERSID",
        "BINGET",
        "LONG_BINGET",
        "BINPUT",
        "LONG_BINPUT",
        "LONG1",
        "PROTO",
        "STOP",
    ]
)


# Budgets. An F5-TTS v1 Base training checkpoint's data.pkl (364 weights, model + EMA + AdamW state, about
# 1,800 storages): about 65,000 opcodes, 16,000 memo entries, 14,000 containers nested at most 6 deep;
# tensors have at most 4 dimensions of int64 sizes. Each budget is over 60 times that; together they hold
# the parse to about 250 MB and 10 s at worst (measured by bench/bench_hostile.py).
MAX_OPCODES = 5_000_000
MAX_CONTAINERS = 1_000_000
MAX_MEMO = 1_000_000
MAX_NESTING = 100
MAX_TENSOR_DIMS = 64
MAX_SIZE_VALUE = 2**63 - 1  # torch sizes, strides and offsets are int64
MAX_KEY_ITEMS = 64  # a tuple used as a dict key or set element
# Causes quote names from the file (storage keys, globals): never more than this many characters of one.
MAX_QUOTED = 80

_TENSOR_REBUILDERS = frozenset(
    f"torch._utils.{f}" for f in ("_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_tensor")
)


class PickleRefused(Exception):
    """The pickle is damaged or asks for something torch's weights_only loader refuses. `cause` says which."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class _OverBudget(PickleRefused):
    """A budget ran out: the file is refused as too large, and no second pass over it is made."""


def quoted(text: str) -> str:
    """A name from the file, short and printable whatever it holds (control characters, lone surrogates)."""
    if len(text) > MAX_QUOTED:
        text = text[:MAX_QUOTED] + "..."
    return text if text.isprintable() else ascii(text)[1:-1]


@dataclass(frozen=True)
class Global:
    module: str
    name: str

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class StorageRef:
    key: str  # the member is data/<key>
    storage_type: str  # legacy class name, e.g. "FloatStorage"
    location: str
    numel: int  # elements of the storage's element type

    @property
    def dtype(self) -> str:
        return STORAGE_DTYPES.get(self.storage_type, ("unknown", 0))[0]

    @property
    def itemsize(self) -> int:
        return STORAGE_DTYPES.get(self.storage_type, ("unknown", 0))[1]

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(frozen=True)
class TensorRef:
    storage: StorageRef
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> str:
        return self.storage.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def elements_needed(self) -> int:
        """How many storage elements the view reaches: offset + 1 + sum((size-1)*stride), 0 if empty."""
        if self.numel == 0:
            return 0
        return self.offset + 1 + sum((s - 1) * st for s, st in zip(self.shape, self.stride, strict=False))


@dataclass(eq=False)
class _Call:
    """An allowed call we do not need to model (torch.device("cpu"), set(...)): kept opaque, never run."""

    func: Global
    args: Any


@dataclass
class PickleSummary:
    top_type: str  # "dict", "list", ...
    top: Any  # the rebuilt top-level object: dicts, lists, numbers, strings, TensorRef
    storages: dict[str, StorageRef] = field(default_factory=dict)
    tensors: list[TensorRef] = field(default_factory=list)

    @property
    def top_keys(self) -> tuple[str, ...]:
        return tuple(str(k) for k in self.top) if isinstance(self.top, dict) else ()


def global_of(arg: str) -> Global:
    """A GLOBAL opcode's "module name", with Python 2 names mapped as torch (and pickle) map them."""
    module, _, name = arg.partition(" ")
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return Global(module, name)


def _named(glob: Global) -> str:
    """A plain name for a global: pickle writes os.system as posix.system on Linux."""
    if glob.module in ("posix", "nt"):
        return quoted(f"os.{glob.name}")
    return quoted(glob.dotted)


def _check_global(glob: Global) -> None:
    if glob.dotted in ALLOWED_GLOBALS and glob.module not in _BLOCKED_MODULES:
        return
    raise PickleRefused(f"pickle references {_named(glob)} (not allowed by torch's weights_only loader)")


_FLAT = (str, int, float, type(None))


def _hashable_key(key: Any, what: str) -> Any:
    """A dict key or set element whose hash costs time linear in its size, else refused.

    torch's loader hashes these; a key built from nested or shared tuples makes that hash recurse past the
    C stack or walk 2^n leaves, so the file could never load anyway.
    """
    if isinstance(key, _FLAT):
        return key
    if isinstance(key, tuple) and len(key) <= MAX_KEY_ITEMS and all(isinstance(k, _FLAT) for k in key):
        return key
    raise PickleRefused(f"damaged pickle: a {what} that is a container or object (only flat values are)")


def _size_value(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SIZE_VALUE


class _Machine:
    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.summary = PickleSummary("", None)
        # Nesting depth of the containers built so far, by id (leaves are 0). Counted as the structure is
        # built; never measured by walking it, which is what a hostile structure would exploit.
        self.depths: dict[int, int] = {}
        self.containers = 0

    def made(self, container: Any, items: Any = ()) -> Any:
        """Record a new container (and its nesting depth) against the budgets."""
        self.containers += 1
        if self.containers > MAX_CONTAINERS:
            raise _OverBudget(f"pickle too large: more than {MAX_CONTAINERS:,} containers")
        depth_of = self.depths.get
        depth = 1 + max((depth_of(id(x), 0) for x in items), default=0)
        if depth > MAX_NESTING:
            raise _OverBudget(f"pickle nested too deep: more than {MAX_NESTING} levels")
        self.depths[id(container)] = depth
        return container

    def grew(self, container: Any, items: Any) -> None:
        """Items added to an existing list or dict: its depth may grow."""
        depth_of = self.depths.get
        depth = max(depth_of(id(container), 1), 1 + max((depth_of(id(x), 0) for x in items), default=0))
        if depth > MAX_NESTING:
            raise _OverBudget(f"pickle nested too deep: more than {MAX_NESTING} levels")
        self.depths[id(container)] = depth

    def mark(self) -> None:
        if len(self.metastack) >= MAX_NESTING:
            raise _OverBudget(f"pickle nested too deep: more than {MAX_NESTING} levels")
        self.metastack.append(self.stack)
        self.stack = []

    def put(self, index: int, value: Any) -> None:
        if index not in self.memo and len(self.memo) >= MAX_MEMO:
            raise _OverBudget(f"pickle too large: more than {MAX_MEMO:,} memo entries")
        self.memo[index] = value

    def persistent(self, pid: Any) -> StorageRef:
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] not in ("storage", b"storage"):
            raise PickleRefused("damaged pickle: a persistent id that is not a tensor storage")
        _tag, storage_type, key, location, numel = pid
        if isinstance(storage_type, Global):
            type_name = storage_type.name
        else:
            raise PickleRefused("damaged pickle: storage without a type")
        # torch.save writes both as strings; anything else would be formatted (walked) by the loader.
        if not isinstance(key, str) or not isinstance(location, str):
            raise PickleRefused("damaged pickle: storage key or location is not a string")
        if not _size_value(numel):
            raise PickleRefused("damaged pickle: storage with a bad size")
        ref = StorageRef(key, type_name, location, numel)
        known = self.summary.storages.get(ref.key)
        if known is not None and known != ref:
            raise PickleRefused(f"damaged pickle: storage {quoted(ref.key)} described twice differently")
        self.summary.storages[ref.key] = ref
        return ref

    def call(self, func: Any, args: Any) -> Any:
        if not isinstance(func, Global):
            raise PickleRefused("damaged pickle: call of something that is not a function")
        if not isinstance(args, tuple):
            raise PickleRefused("damaged pickle: call arguments are not a tuple")
        name = func.dotted
        if name in _TENSOR_REBUILDERS:
            return self.tensor(args)
        if name in ("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"):
            return args[0] if args else None
        if name in ("collections.OrderedDict", "collections.Counter"):
            result: dict[Any, Any] = self.made({})
            if args and isinstance(args[0], list | tuple):
                pairs = args[0]
                if name == "collections.Counter":
                    for item in pairs:
                        _hashable_key(item, "counted element")
                else:
                    for pair in pairs:
                        if not isinstance(pair, tuple) or len(pair) != 2:
                            raise PickleRefused("damaged pickle: OrderedDict items that are not pairs")
                        result[_hashable_key(pair[0], "dict key")] = pair[1]
                    self.grew(result, result.values())
            return result
        if name == "builtins.set" and args and isinstance(args[0], list | tuple):
            # The loader builds the set, hashing every element.
            for item in args[0]:
                _hashable_key(item, "set element")
        if name == "builtins.bytearray" and args and isinstance(args[0], int):
            raise PickleRefused("damaged pickle: bytearray of a size rather than of bytes")
        if name == "torch.Size":
            return self.made(tuple(args[0]) if args else ())
        return self.made(_Call(func, args), (args,))

    def tensor(self, args: tuple[Any, ...]) -> TensorRef:
        if len(args) < 4 or not isinstance(args[0], StorageRef):
            raise PickleRefused("damaged pickle: tensor without a storage")
        storage, offset, shape, stride = args[:4]
        if not (isinstance(shape, tuple) and isinstance(stride, tuple) and len(shape) == len(stride)):
            raise PickleRefused("damaged pickle: tensor with a bad shape")
        if len(shape) > MAX_TENSOR_DIMS:
            raise _OverBudget(
                f"pickle holds a tensor of {len(shape)} dimensions (more than {MAX_TENSOR_DIMS})"
            )
        if not all(_size_value(x) for x in (offset, *shape, *stride)):
            raise PickleRefused("damaged pickle: tensor with a bad shape (sizes must be int64 and >= 0)")
        ref = TensorRef(storage, offset, shape, stride)
        self.summary.tensors.append(ref)
        return ref


def _set_items(m: _Machine, target: Any, items: list[Any]) -> None:
    if not isinstance(target, dict):
        raise PickleRefused("damaged pickle: items set on something that is not a dict")
    if len(items) % 2:
        raise PickleRefused("damaged pickle: odd number of dict items")
    for i in range(0, len(items), 2):
        target[_hashable_key(items[i], "dict key")] = items[i + 1]
    m.grew(target, items[1::2])


_STRING_OPS = frozenset(
    ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING")
)


def referenced_globals(data: bytes) -> list[Global]:
    """Every global the pickle names, in order, found by decoding opcodes only.

    GLOBAL carries its name; STACK_GLOBAL (protocol 4+) takes two strings pushed before it, followed here
    through the memo as well. Decoding stops quietly at the first damaged opcode or past the opcode budget;
    memory stays bounded by the memo budget (only the last two pushed strings are kept).
    """
    found: list[Global] = []
    last: list[str | None] = [None, None]
    memo: dict[int, str | None] = {}
    try:
        for count, (opcode, arg, _pos) in enumerate(pickletools.genops(data)):
            if count >= MAX_OPCODES:
                break
            op = opcode.name
            pushed: str | None = None
            if op == "GLOBAL":
                found.append(global_of(str(arg)))
            elif op == "STACK_GLOBAL" and None not in last:
                found.append(Global(str(last[0]), str(last[1])))
            elif op in _STRING_OPS:
                pushed = str(arg)
            elif op in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                index = len(memo) if op == "MEMOIZE" else int(arg)
                if index in memo or len(memo) < MAX_MEMO:
                    memo[index] = last[1]
                continue  # a PUT leaves the stack as it was
            elif op in ("BINGET", "LONG_BINGET", "GET"):
                pushed = memo.get(int(arg))
            last = [last[1], pushed]
    except ValueError:
        pass
    return found


def scan_pickle(data: bytes) -> PickleSummary:
    """Rebuild the structure of a torch data.pkl statically. Raises PickleRefused, never runs anything."""
    try:
        return _interpret(data)
    except _OverBudget:
        raise
    except PickleRefused as refused:
        # Name a forbidden global even when something else stopped the walk first (an opcode torch
        # refuses, a damaged stretch): "references os.system" is the cause a reader needs to see.
        for glob in referenced_globals(data):
            _check_global(glob)
        raise refused from None


def _interpret(data: bytes) -> PickleSummary:
    m = _Machine()
    try:
        top = _run(m, data)
    except PickleRefused:
        raise
    except ValueError as exc:
        # genops: "at position 1234, opcode b'\\xf3' unknown", "pickle exhausted before seeing STOP", ...
        raise PickleRefused(f"damaged pickle ({quoted(str(exc))})") from exc
    except (IndexError, KeyError, TypeError, AttributeError) as exc:
        raise PickleRefused(f"damaged pickle (impossible structure: {type(exc).__name__})") from exc
    m.summary.top = top
    m.summary.top_type = type(top).__name__
    return m.summary


def _run(m: _Machine, data: bytes) -> Any:
    """The stack machine. One branch per opcode torch's loader accepts, the most frequent first (speed)."""
    st = m.stack
    memo = m.memo
    for count, (opcode, arg, _pos) in enumerate(pickletools.genops(data)):
        op = opcode.name
        if op == "LONG_BINPUT" or op == "BINPUT":
            if arg not in memo and len(memo) >= MAX_MEMO:
                m.put(arg, st[-1])  # raises: over the budget
            memo[arg] = st[-1]
        elif op == "BININT1" or op == "BINUNICODE" or op == "BININT2" or op == "BININT" or op == "BINFLOAT":
            st.append(arg)
        elif op == "BINGET" or op == "LONG_BINGET":
            st.append(memo[arg])
        elif op == "MARK":
            m.mark()
            st = m.stack
        elif op == "REDUCE":
            args = st.pop()
            st[-1] = m.call(st[-1], args)
        elif op == "TUPLE":
            items = st
            st = m.stack = m.metastack.pop()
            st.append(m.made(tuple(items), items))
        elif op == "EMPTY_TUPLE":
            st.append(())
        elif op == "NEWFALSE":
            st.append(False)
        elif op == "BINPERSID":
            st.append(m.persistent(st.pop()))
        elif op == "TUPLE1":
            st[-1] = m.made((st[-1],), st[-1:])
        elif op == "EMPTY_DICT":
            st.append(m.made({}))
        elif op == "TUPLE2":
            st[-2:] = [m.made((st[-2], st[-1]), st[-2:])]
        elif op == "SETITEM":
            value = st.pop()
            key = st.pop()
            _set_items(m, st[-1], [key, value])
        elif op == "SETITEMS":
            items = st
            st = m.stack = m.metastack.pop()
            _set_items(m, st[-1], items)
        elif op == "TUPLE3":
            st[-3:] = [m.made((st[-3], st[-2], st[-1]), st[-3:])]
        elif op == "GLOBAL":
            glob = global_of(str(arg))
            _check_global(glob)
            st.append(glob)
        elif op == "STOP":
            if len(st) != 1 or m.metastack:
                raise PickleRefused("damaged pickle: unbalanced stack at STOP")
            return st.pop()
        else:
            st = _rare(m, st, op, arg)
        if count >= MAX_OPCODES:
            raise _OverBudget(f"pickle too large: more than {MAX_OPCODES:,} opcodes")
    raise PickleRefused("damaged pickle (no STOP)")


def _rare(m: _Machine, st: list[Any], op: str, arg: Any) -> list[Any]:
    """The less frequent opcodes. Returns the (possibly new) current stack."""
    if op == "STACK_GLOBAL":
        if isinstance(st[-2], str) and isinstance(st[-1], str):
            _check_global(Global(st[-2], st[-1]))
        raise PickleRefused("pickle uses opcode STACK_GLOBAL, which torch's weights_only loader refuses")
    if op not in ALLOWED_OPCODES:
        raise PickleRefused(f"pickle uses opcode {op}, which torch's weights_only loader refuses")
    if op in ("LONG1", "SHORT_BINSTRING"):
        st.append(arg)
    elif op == "NONE":
        st.append(None)
    elif op == "NEWTRUE":
        st.append(True)
    elif op == "EMPTY_LIST":
        st.append(m.made([]))
    elif op == "EMPTY_SET":
        st.append(m.made(_Call(Global("builtins", "set"), ())))
    elif op == "APPEND":
        item = st.pop()
        if not isinstance(st[-1], list):
            raise PickleRefused("damaged pickle: append to something that is not a list")
        st[-1].append(item)
        m.grew(st[-1], (item,))
    elif op == "APPENDS":
        items = st
        st = m.stack = m.metastack.pop()
        if not isinstance(st[-1], list):
            raise PickleRefused("damaged pickle: append to something that is not a list")
        st[-1].extend(items)
        m.grew(st[-1], items)
    elif op == "NEWOBJ":
        args = st.pop()
        cls = st.pop()
        st.append(m.call(cls, args))
    elif op == "BUILD":
        st.pop()  # state of an OrderedDict (_metadata) or a Parameter: nothing we need
        if not isinstance(st[-1], dict | TensorRef | _Call):
            raise PickleRefused("damaged pickle: BUILD on an object torch would refuse")
    return st  # PROTO: nothing to do
