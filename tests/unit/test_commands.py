"""The trainer command line and the stock-mode folder links (torch-free)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.errors import CheckFailed, ConfigError
from entrypoint.settings import load_settings
from entrypoint.train import commands
from entrypoint.train.commands import build_trainer_argv, prepare_stock_layout, stock_arguments

REPO_ROOT = Path(__file__).resolve().parents[2]


def _settings(**values: str):
    return load_settings({key.upper(): value for key, value in values.items()}).settings


def test_safe_mode_single_process_runs_the_driver_with_this_python() -> None:
    assert build_trainer_argv(_settings(), processes=1) == [sys.executable, "-m", "entrypoint.train"]


def test_safe_mode_several_processes_uses_accelerate_launch() -> None:
    argv = build_trainer_argv(_settings(mixed_precision="fp16"), processes=4)
    assert Path(argv[0]).name == "accelerate" and argv[1] == "launch"
    assert argv[argv.index("--num_processes") + 1] == "4"
    assert argv[argv.index("--mixed_precision") + 1] == "fp16"
    assert argv[-2:] == ["-m", "entrypoint.train"]


def test_zero_processes_is_refused() -> None:
    with pytest.raises(ConfigError):
        build_trainer_argv(_settings(), processes=0)


def test_stock_mode_passes_every_setting_the_cli_accepts(tmp_path: Path) -> None:
    settings = _settings(
        trainer_mode="stock",
        model_preset="F5TTS_Base",
        dataset_name="ptbr",
        learning_rate="2e-5",
        batch_size="1600",
        batch_size_type="frame",
        max_samples="32",
        grad_accumulation_steps="2",
        max_grad_norm="0.5",
        epochs="7",
        warmup_updates="100",
        save_every_updates="500",
        keep_checkpoints="4",
        last_every_updates="50",
        tokenizer="custom",
        vocab_file=str(tmp_path / "vocab.txt"),
        logger="tensorboard",
        pretrained_checkpoint=str(tmp_path / "model_1200000.pt"),
    )
    argv = build_trainer_argv(settings, processes=1)
    assert Path(argv[0]).name == "f5-tts_finetune-cli"
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    expected = {
        "--exp_name": "F5TTS_Base",
        "--dataset_name": "ptbr",
        "--learning_rate": "2e-05",
        "--batch_size_per_gpu": "1600",
        "--batch_size_type": "frame",
        "--max_samples": "32",
        "--grad_accumulation_steps": "2",
        "--max_grad_norm": "0.5",
        "--epochs": "7",
        "--num_warmup_updates": "100",
        "--save_per_updates": "500",
        "--keep_last_n_checkpoints": "4",
        "--last_per_updates": "50",
        "--tokenizer": "custom",
        "--tokenizer_path": str(tmp_path / "vocab.txt"),
        "--logger": "tensorboard",
    }
    assert {key: options.get(key) for key in expected} == expected
    # --finetune with an explicit --pretrain: never the hub download that --finetune alone triggers.
    assert argv[-3:] == ["--finetune", "--pretrain", str(tmp_path / "model_1200000.pt")]


def test_stock_mode_several_processes_launches_the_cli_module() -> None:
    argv = build_trainer_argv(_settings(trainer_mode="stock"), processes=2)
    assert argv[1] == "launch" and "-m" in argv
    assert argv[argv.index("-m") + 1] == "f5_tts.train.finetune_cli"


def test_stock_mode_refuses_the_tiny_preset() -> None:
    with pytest.raises(ConfigError, match="tiny"):
        build_trainer_argv(_settings(trainer_mode="stock", model_preset="tiny"), processes=1)


@pytest.mark.slow
def test_stock_arguments_parse_with_the_real_finetune_cli(tmp_path: Path) -> None:
    pytest.importorskip("f5_tts")
    settings = _settings(trainer_mode="stock", logger="wandb", pretrained_checkpoint=str(tmp_path / "p.pt"))
    script = (
        "import sys, json; from f5_tts.train.finetune_cli import parse_args; "
        "sys.argv = ['f5-tts_finetune-cli'] + json.loads(sys.argv[1]); print(json.dumps(vars(parse_args())))"
    )
    import json

    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(stock_arguments(settings))],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    assert parsed["exp_name"] == settings.model_preset
    assert parsed["keep_last_n_checkpoints"] == settings.keep_checkpoints
    assert parsed["finetune"] is True and parsed["pretrain"] == str(tmp_path / "p.pt")
    assert parsed["logger"] == "wandb"


def test_commands_module_imports_without_torch() -> None:
    code = "import sys, entrypoint.train.commands; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def _layout_settings(tmp_path: Path):
    return _settings(
        trainer_mode="stock",
        dataset_name="ptbr",
        tokenizer="char",
        output_dir=str(tmp_path / "output"),
        dataset_dir=str(tmp_path / "dataset"),
    )


def test_prepare_stock_layout_links_package_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "site"
    monkeypatch.setattr(commands, "f5_tts_root", lambda: root)
    settings = _layout_settings(tmp_path)
    planned = prepare_stock_layout(settings, apply=False)
    assert all(line.startswith("would link") for line in planned) and len(planned) == 2
    assert not root.exists()
    done = prepare_stock_layout(settings, apply=True)
    assert os.readlink(root / "ckpts" / "ptbr") == str(tmp_path / "output")
    assert os.readlink(root / "data" / "ptbr_char") == str(tmp_path / "dataset")
    assert all("now points to" in line for line in done)
    again = prepare_stock_layout(settings, apply=True)
    assert all("already points to" in line for line in again)


def test_prepare_stock_layout_repoints_an_old_link_and_refuses_a_real_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "site"
    monkeypatch.setattr(commands, "f5_tts_root", lambda: root)
    (root / "ckpts").mkdir(parents=True)
    (root / "ckpts" / "ptbr").symlink_to(tmp_path / "old-output")
    (root / "data" / "ptbr_char").mkdir(parents=True)
    (root / "data" / "ptbr_char" / "raw.arrow").write_bytes(b"user data")
    settings = _layout_settings(tmp_path)
    with pytest.raises(CheckFailed, match="not a link"):
        prepare_stock_layout(settings, apply=True)
    assert (root / "data" / "ptbr_char" / "raw.arrow").read_bytes() == b"user data"  # untouched
    assert os.readlink(root / "ckpts" / "ptbr") == str(tmp_path / "output")  # the old link was re-pointed
