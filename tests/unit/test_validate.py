"""validate_file on real F5-TTS-shaped checkpoints: kinds, schema rules, compatibility, reads, no torch."""

from __future__ import annotations

import builtins
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from entrypoint.checkpoints import validate as validate_module
from entrypoint.checkpoints.validate import Expectation, validate_file
from tests import ckpt_factory

torch = pytest.importorskip("torch", reason="checkpoints are made with torch.save")
pytestmark = pytest.mark.trainer

VOCAB = ckpt_factory.DEFAULT_VOCAB_SIZE


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "training": ckpt_factory.make_training_checkpoint(root / "model_1200.pt", update=1200),
        "pretrained_pt": ckpt_factory.make_pretrained_checkpoint(root / "pretrained_a.pt", fmt="pt"),
        "pretrained_st": ckpt_factory.make_pretrained_checkpoint(
            root / "pretrained_b.safetensors", fmt="safetensors"
        ),
    }


def _save(obj: Any, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_training_checkpoint_quick(files: dict[str, Path]) -> None:
    verdict = validate_file(files["training"])
    assert verdict.valid, verdict.cause
    assert (verdict.format, verdict.kind, verdict.update) == ("torch-zip", "training", 1200)
    assert verdict.levels == ("structure", "schema")
    assert verdict.size == files["training"].stat().st_size
    assert verdict.details["tensors"] > 100 and verdict.details["crc_recorded"] is True


def test_all_levels_on_a_valid_training_checkpoint(files: dict[str, Path]) -> None:
    verdict = validate_file(files["training"], deep=True, expect=Expectation("tiny", VOCAB), load=True)
    assert verdict.valid, verdict.cause
    assert verdict.levels == ("structure", "schema", "integrity", "compatibility", "load")
    assert verdict.details["crc_checked"] == verdict.details["members"]


@pytest.mark.parametrize("name", ["pretrained_pt", "pretrained_st"])
def test_pretrained_files(files: dict[str, Path], name: str) -> None:
    verdict = validate_file(files[name], deep=True, expect=Expectation("tiny", VOCAB))
    assert verdict.valid, verdict.cause
    assert (verdict.kind, verdict.update) == ("pretrained", 0)


def test_model_state_dict_only_is_not_loadable_by_the_trainer(files: dict[str, Path], tmp_path: Path) -> None:
    state = ckpt_factory.training_state(5)
    path = _save({"model_state_dict": state["model_state_dict"]}, tmp_path / "model_5.pt")
    verdict = validate_file(path)
    assert not verdict.valid
    assert verdict.cause.startswith("missing key ema_model_state_dict (the file holds model_state_dict only")


def test_bare_state_dict_is_not_loadable_by_the_trainer(tmp_path: Path) -> None:
    state = ckpt_factory.training_state(5)
    verdict = validate_file(_save(dict(state["ema_model_state_dict"]), tmp_path / "model_5.pt"))
    assert "missing key ema_model_state_dict (a bare state dict" in verdict.cause


def test_ema_with_model_but_no_update_is_pretrained(tmp_path: Path) -> None:
    # F5-TTS loads only the EMA weights when there is no `update`, so nothing else is needed.
    state = ckpt_factory.training_state(5)
    del state["update"], state["optimizer_state_dict"], state["scheduler_state_dict"]
    verdict = validate_file(_save(state, tmp_path / "pretrained_x.pt"))
    assert verdict.valid and verdict.kind == "pretrained" and verdict.update == 0


def test_old_step_key_counts_as_update(tmp_path: Path) -> None:
    state = ckpt_factory.training_state(5)
    state["step"] = state.pop("update")
    verdict = validate_file(_save(state, tmp_path / "model_5.pt"))
    assert verdict.valid and (verdict.kind, verdict.update) == ("training", 5)


@pytest.mark.parametrize("bad", ["1200", -1, 1.5, None])
def test_update_must_be_a_whole_number(tmp_path: Path, bad: Any) -> None:
    state = ckpt_factory.training_state(5)
    state["update"] = bad
    verdict = validate_file(_save(state, tmp_path / "model_5.pt"))
    assert not verdict.valid and verdict.cause.startswith("update is not a whole number")


def test_shape_mismatch_names_the_tensor(files: dict[str, Path]) -> None:
    verdict = validate_file(files["training"], expect=Expectation("tiny", VOCAB + 55))
    assert not verdict.valid
    assert verdict.cause == (
        f"shape mismatch for transformer.text_embed.text_embed.weight: [{VOCAB + 1}, 32] in file, "
        f"[{VOCAB + 56}, 32] for tiny with {VOCAB + 55} symbols"
    )
    assert verdict.details["failed_level"] == "compatibility"
    assert verdict.levels == ("structure", "schema")


def test_other_architecture_is_incompatible(files: dict[str, Path]) -> None:
    verdict = validate_file(files["pretrained_st"], expect=Expectation("F5TTS_v1_Base", None))
    assert verdict.cause.startswith(
        "shape mismatch for ema_model.transformer.text_embed.text_embed.weight: ["
    )
    assert "for F5TTS_v1_Base" in verdict.cause
    e2 = validate_file(files["training"], expect=Expectation("E2TTS_Base", None))
    assert not e2.valid and "E2TTS_Base" in e2.cause


def test_vocab_unknown_skips_only_the_row_count(files: dict[str, Path]) -> None:
    assert validate_file(files["training"], expect=Expectation("tiny", None)).valid


def test_depth_mismatch(tmp_path: Path) -> None:
    state = ckpt_factory.training_state(5)
    for key in ("model_state_dict", "ema_model_state_dict"):
        state[key] = {k: v for k, v in state[key].items() if "transformer_blocks.1." not in k}
    verdict = validate_file(_save(state, tmp_path / "model_5.pt"), expect=Expectation("tiny", VOCAB))
    assert verdict.cause == "depth mismatch in model_state_dict: 1 transformer blocks in file, 2 for tiny"


def test_truncation_names_sibling_size(files: dict[str, Path], tmp_path: Path) -> None:
    cut = tmp_path / "pretrained_model_200000.pt"
    cut.write_bytes(files["training"].read_bytes()[:1_700_000])
    verdict = validate_file(cut, reference_size=5_100_000_000)
    assert verdict.cause == "truncated: zip central directory missing (1.7 MB where siblings are 5.1 GB)"
    assert (verdict.kind, verdict.update, verdict.levels) == ("unknown", None, ())


def test_storage_smaller_than_the_pickle_says(tmp_path: Path) -> None:
    src = _save({"ema_model_state_dict": {"w": torch.ones(4)}}, tmp_path / "x.pt")
    dst = tmp_path / "pretrained_y.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(
                info.filename.replace("x/", "pretrained_y/"),
                data[:8] if info.filename == "x/data/0" else data,
            )
    verdict = validate_file(dst)
    assert verdict.cause == "size mismatch in data/0: 8 bytes, the pickle says 16"


def test_quick_reads_a_few_hundred_kilobytes_of_a_large_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = ckpt_factory.training_state(5)
    state["model_state_dict"] = {**state["model_state_dict"], "big": torch.zeros(16 * 1024 * 1024)}  # 64 MB
    path = _save(state, tmp_path / "model_5.pt")
    read = 0
    real_open = builtins.open

    class Counting:
        def __init__(self, f: Any) -> None:
            self._f = f

        def read(self, n: int = -1) -> bytes:
            nonlocal read
            data = self._f.read(n)
            read += len(data)
            return data

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

    monkeypatch.setattr(validate_module, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    verdict = validate_file(path)
    assert verdict.valid, verdict.cause
    assert read < 200_000 < path.stat().st_size / 300


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"", "empty file"),
        (bytes(10_000), "zero-filled: zeros at start and end (10.0 kB)"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a checkpoint (PNG image)"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 5\n", "not a checkpoint (Git LFS"),
        (b"<!DOCTYPE html><html>", "not a checkpoint (HTML page"),
        (b"\x80\x04\x95" + bytes(20), "not a checkpoint (a bare pickle"),
    ],
)
def test_foreign_content(tmp_path: Path, content: bytes, cause: str) -> None:
    path = tmp_path / "model_1.pt"
    path.write_bytes(content)
    verdict = validate_file(path, deep=True)
    assert not verdict.valid and verdict.cause.startswith(cause)
    assert verdict.details["failed_level"] == "structure"


def test_legacy_format(tmp_path: Path) -> None:
    path = tmp_path / "model_1.pt"
    torch.save({"update": 1}, path, _use_new_zipfile_serialization=False)
    verdict = validate_file(path)
    assert verdict.format == "torch-legacy" and verdict.cause.startswith("legacy (non-zip) torch format")


def test_extension_decides_the_loader(files: dict[str, Path], tmp_path: Path) -> None:
    as_st = tmp_path / "model_1.safetensors"
    as_st.write_bytes(files["training"].read_bytes())
    assert "named .safetensors" in validate_file(as_st).cause
    as_pt = tmp_path / "model_2.pt"
    as_pt.write_bytes(files["pretrained_st"].read_bytes())
    assert "not named .safetensors" in validate_file(as_pt).cause


def test_never_raises(tmp_path: Path, files: dict[str, Path]) -> None:
    assert validate_file(tmp_path / "missing.pt").cause == "file not found"
    assert validate_file(tmp_path).cause == "not a regular file"
    original = files["training"].read_bytes()
    rng = random.Random(1)
    path = tmp_path / "model_9.pt"
    for _ in range(40):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data[: rng.randrange(len(data) // 2, len(data) + 1)]))
        validate_file(path, deep=True, expect=Expectation("tiny", VOCAB))  # must return, whatever the bytes


def test_works_without_torch(files: dict[str, Path]) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from pathlib import Path\n"
        "from entrypoint.checkpoints.validate import validate_file, Expectation\n"
        f"v = validate_file(Path({str(files['training'])!r}), deep=True, expect=Expectation('tiny', {VOCAB}), load=True)\n"
        "assert v.valid, v.cause\n"
        "assert v.levels == ('structure', 'schema', 'integrity', 'compatibility'), v.levels\n"
        "assert v.details['load'] == 'skipped: torch is not installed'\n"
        "assert sys.modules['torch'] is None\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_load_level_reports_what_torch_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save({"ema_model_state_dict": {"w": torch.ones(2)}}, tmp_path / "pretrained_z.pt")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory")

    monkeypatch.setattr(torch, "load", refuse)
    verdict = validate_file(path, load=True)
    assert verdict.cause == (
        "torch.load refused it: PytorchStreamReader failed reading zip archive: failed finding central directory"
    )
    assert verdict.levels == ("structure", "schema")


def test_read_error_during_the_deep_pass(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # A failing disk cannot be made here; the error is raised where the real read would raise it.
    from entrypoint.checkpoints import torch_zip

    def failing_read(*args: Any, **kwargs: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(torch_zip, "check_crcs", failing_read)
    verdict = validate_file(files["training"], deep=True)
    assert verdict.cause == "read error: Input/output error"
    assert verdict.details["failed_level"] == "integrity"
    assert verdict.levels == ("structure", "schema")
