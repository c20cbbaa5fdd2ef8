"""Static reading of data.pkl: structure, tensors, and the same allow-list as torch's weights_only loader."""

from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from entrypoint.checkpoints.pickle_scan import (
    ALLOWED_GLOBALS,
    PickleRefused,
    StorageRef,
    TensorRef,
    referenced_globals,
    scan_pickle,
)

torch = pytest.importorskip("torch", reason="compared against torch's own loader and torch.save output")


def _torch_pickle(obj: Any, tmp_path: Path) -> bytes:
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with zipfile.ZipFile(path) as z:
        return z.read("x/data.pkl")


class _Calls:
    """Pickles as a call of `func(*args)`: what a hostile or foreign pickle contains."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.func, self.args)


def test_allow_list_mirrors_torch_weights_only_loader() -> None:
    from torch._weights_only_unpickler import _get_allowed_globals

    assert set(_get_allowed_globals()) == ALLOWED_GLOBALS


def test_state_dict_structure_and_tensors(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float16)
    obj = {
        "model_state_dict": collections.OrderedDict(
            w=torch.zeros(4, 5), view=base[6:18].view(3, 4), same=base, p=torch.nn.Parameter(torch.ones(2))
        ),
        "update": 1200,
        "meta": {"lr": 1e-4, "names": ["a", "b"], "flag": True, "nothing": None},
    }
    summary = scan_pickle(_torch_pickle(obj, tmp_path))
    assert summary.top_keys == ("model_state_dict", "update", "meta")
    assert summary.top["update"] == 1200
    assert summary.top["meta"] == {"lr": 1e-4, "names": ["a", "b"], "flag": True, "nothing": None}
    sd = summary.top["model_state_dict"]
    assert (sd["w"].shape, sd["w"].dtype, sd["w"].offset) == ((4, 5), "float32", 0)
    view, same = sd["view"], sd["same"]
    assert (view.shape, view.stride, view.offset, view.dtype) == ((3, 4), (4, 1), 6, "float16")
    assert view.storage.key == same.storage.key  # one storage shared by two tensors, as torch saves it
    assert same.storage.numel == 24 and same.storage.nbytes == 48
    assert view.elements_needed() == 18
    assert sd["p"].shape == (2,)  # a Parameter is its tensor
    assert len(summary.storages) == 3


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize(
    ("func", "args", "named"),
    [
        (os.system, ("touch CANARY",), "os.system"),
        (builtins.eval, ("1",), "builtins.eval"),
        (subprocess.Popen, (["true"],), "subprocess.Popen"),
        (builtins.getattr, ("x", "upper"), "builtins.getattr"),
    ],
)
def test_forbidden_globals_are_named_and_never_called(
    func: Any,
    args: tuple[Any, ...],
    named: str,
    protocol: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    data = pickle.dumps({"model_state_dict": {}, "x": _Calls(func, *args)}, protocol=protocol)
    with pytest.raises(PickleRefused, match=rf"pickle references {named} \(not allowed"):
        scan_pickle(data)
    assert not (tmp_path / "CANARY").exists()


def test_globals_found_through_memo_for_stack_global() -> None:
    # Protocol 4: "posix" and "system" memoized, then fetched back for a second STACK_GLOBAL.
    data = b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94\x93\x94" + b"0" + b"h\x00h\x01\x93" + b"."
    assert [g.dotted for g in referenced_globals(data)] == ["posix.system", "posix.system"]
    with pytest.raises(PickleRefused, match=r"os\.system"):
        scan_pickle(data)


def test_python2_names_are_mapped_like_torch_maps_them() -> None:
    data = pickle.dumps({"s": {1}, "e": builtins.eval}, protocol=2)
    assert "__builtin__ set" in data.decode("latin-1").replace("\n", " ")
    assert [g.dotted for g in referenced_globals(data)] == ["builtins.set", "builtins.eval"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "obj",
    [
        {"a": 1, "b": [1, 2], "c": (1.5, None), "d": -(2**70)},
        collections.OrderedDict(a=1),
        {"s": {1, 2}},
        {"b": b"bytes", "ba": bytearray(b"x")},
        {"c": complex(1, 2)},
        {"d": torch.device("cpu")},
        {"ok": _Calls(collections.Counter, "aab")},
        {"bad": _Calls(builtins.print, "x")},
        {"bad": _Calls(collections.deque, [1])},
        {"frozen": frozenset({1})},
    ],
)
@pytest.mark.parametrize("protocol", [2, 4])
def test_accepts_exactly_what_torch_weights_only_accepts(obj: Any, protocol: int) -> None:
    from torch._weights_only_unpickler import Unpickler

    data = pickle.dumps(obj, protocol=protocol)
    try:
        Unpickler(io.BytesIO(data)).load()
        torch_accepts = True
    except Exception:
        torch_accepts = False
    try:
        scan_pickle(data)
        we_accept = True
    except PickleRefused:
        we_accept = False
    assert we_accept == torch_accepts


@pytest.mark.parametrize("cut", [1, 10, 100, -1])
def test_truncated_pickle_is_damaged(cut: int, tmp_path: Path) -> None:
    data = _torch_pickle({"w": torch.zeros(2), "update": 3}, tmp_path)
    with pytest.raises(PickleRefused, match="damaged pickle"):
        scan_pickle(data[:cut])


def test_garbage_is_damaged() -> None:
    with pytest.raises(PickleRefused, match="damaged pickle"):
        scan_pickle(bytes(range(256)) * 4)


def test_persistent_id_other_than_storage_is_refused() -> None:
    class WithPid(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return ("module", "x") if obj == "marker" else None

    buffer = io.BytesIO()
    WithPid(buffer, protocol=2).dump({"a": "marker"})
    with pytest.raises(PickleRefused, match="persistent id"):
        scan_pickle(buffer.getvalue())


def test_tensor_reach_uses_strides() -> None:
    storage = StorageRef("0", "FloatStorage", "cpu", 100)
    assert TensorRef(storage, 10, (3, 4), (1, 3)).elements_needed() == 10 + 1 + 2 * 1 + 3 * 3
    assert TensorRef(storage, 99, (0, 4), (4, 1)).elements_needed() == 0
    assert TensorRef(storage, 5, (), ()).elements_needed() == 6


def test_flat_dict_keys_are_kept_and_container_keys_refused() -> None:
    summary = scan_pickle(pickle.dumps({"a": 1, 2: "b", (1, "x"): None, 1.5: [], None: 0}, protocol=2))
    assert summary.top == {"a": 1, 2: "b", (1, "x"): None, 1.5: [], None: 0}
    for key in (((1,),), (1, (2, 3))):
        with pytest.raises(PickleRefused, match="dict key that is a container"):
            scan_pickle(pickle.dumps({key: 1}, protocol=2))


def test_budgets_name_what_was_too_large() -> None:
    from entrypoint.checkpoints import pickle_scan

    deep = b"\x80\x02" + b"]" * 101 + b"a" * 100 + b"."  # 101 nested lists, built by APPEND
    with pytest.raises(PickleRefused, match="nested too deep: more than 100 levels"):
        scan_pickle(deep)
    shallow = b"\x80\x02" + b"]" * 100 + b"a" * 99 + b"."
    assert isinstance(scan_pickle(shallow).top, list)
    memo = (
        b"\x80\x02N"
        + b"".join(b"r" + i.to_bytes(4, "little") for i in range(pickle_scan.MAX_MEMO + 1))
        + b"."
    )
    with pytest.raises(PickleRefused, match="more than 1,000,000 memo entries"):
        scan_pickle(memo)
