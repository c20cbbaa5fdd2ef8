"""The trainer command line of each TRAINER_MODE and the stock-mode folder links (torch-free)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.actions import LINK_FOLDER, perform
from entrypoint.errors import ConfigError
from entrypoint.modes import StockMode, mode_for, stock_arguments
from entrypoint.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def _settings(**values: str):
    return load_settings({key.upper(): value for key, value in values.items()}).settings


def build_trainer_argv(settings, *, processes: int) -> list[str]:
    return mode_for(settings).argv(settings, processes)


def test_safe_mode_single_process_runs_the_driver_with_this_python() -> None:
    assert build_trainer_argv(_settings(), processes=1) == [sys.executable, "-m", "entrypoint.train"]


def test_safe_mode_several_processes_uses_accelerate_launch() -> None:
    argv = build_trainer_argv(_settings(mixed_precision="fp16"), processes=4)
    # Accelerate's launch through entrypoint.train.launcher: the trainer's exit code, a stop save given time.
    assert argv[:3] == [sys.executable, "-m", "entrypoint.train.launcher"]
    assert argv[argv.index("--stop-wait-s") + 1] == "170"
    assert argv[argv.index("--num_processes") + 1] == "4"
    assert argv[argv.index("--mixed_precision") + 1] == "fp16"
    assert argv[-2:] == ["-m", "entrypoint.train"]
    # Without --multi_gpu Accelerate starts one process unless it sees several GPUs (the CPU, one GPU).
    assert "--multi_gpu" in argv
    assert argv[argv.index("--main_process_port") + 1] == "0"  # a free port: two trainers on one machine


@pytest.mark.parametrize(("environ", "count"), [({}, 1), ({"WORLD_SIZE": "2"}, 2), ({"WORLD_SIZE": "x"}, 1)])
def test_the_trainer_counts_the_processes_its_launcher_started(environ: dict[str, str], count: int) -> None:
    from entrypoint.train.distributed import launched_processes

    assert launched_processes(environ) == count


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
    # F5-TTS's own Accelerator has no cpu=True: on the CPU, processes started with --multi_gpu would each
    # train alone and all write model_last.pt; without it Accelerate starts one process there.
    assert "--multi_gpu" not in argv


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


def test_modes_module_imports_without_torch() -> None:
    code = "import sys, entrypoint.modes; assert 'torch' not in sys.modules, 'torch was imported'"
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


def test_stock_layout_links_package_folders(tmp_path: Path) -> None:
    root = tmp_path / "site"
    settings = _layout_settings(tmp_path)
    planned, problem = StockMode().layout(settings, root)
    assert problem is None and [a.kind for a in planned] == [LINK_FOLDER, LINK_FOLDER]
    assert not root.exists()  # planning changes nothing
    assert all(result.done for result in perform(planned, quarantine_dir=None).results)
    assert os.readlink(root / "ckpts" / "ptbr") == str(tmp_path / "output")
    assert os.readlink(root / "data" / "ptbr_char") == str(tmp_path / "dataset")
    assert StockMode().layout(settings, root) == ([], None)  # already in place: nothing to do


def test_stock_layout_repoints_an_old_link_and_refuses_a_real_folder(tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "ckpts").mkdir(parents=True)
    (root / "ckpts" / "ptbr").symlink_to(tmp_path / "old-output")
    settings = _layout_settings(tmp_path)
    planned, _ = StockMode().layout(settings, root)
    assert (planned[0].path, planned[0].target) == (root / "ckpts" / "ptbr", tmp_path / "output")
    (root / "data" / "ptbr_char").mkdir(parents=True)
    (root / "data" / "ptbr_char" / "raw.arrow").write_bytes(b"user data")
    planned, problem = StockMode().layout(settings, root)
    assert planned == [] and problem is not None and "not a link" in problem.message
    assert (root / "data" / "ptbr_char" / "raw.arrow").read_bytes() == b"user data"  # untouched
    assert os.readlink(root / "ckpts" / "ptbr") == str(tmp_path / "old-output")  # nothing done at all
