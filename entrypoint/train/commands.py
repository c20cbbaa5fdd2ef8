"""The trainer command the preflight execs, and the folder layout stock F5-TTS needs. Torch-free."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from entrypoint.errors import CheckFailed, ConfigError
from entrypoint.settings import Settings

STOCK_PRESETS = ("F5TTS_v1_Base", "F5TTS_Base", "E2TTS_Base")
STOCK_SCRIPT = "f5-tts_finetune-cli"
STOCK_MODULE = "f5_tts.train.finetune_cli"


def _launcher(processes: int, settings: Settings) -> list[str]:
    """`accelerate launch` for several processes (one per GPU), from the same environment as Python."""
    accelerate = Path(sys.executable).with_name("accelerate")
    return [
        str(accelerate) if accelerate.is_file() else "accelerate",
        "launch",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        settings.mixed_precision,
        "--dynamo_backend",
        "no",
    ]


def vocab_file_for(settings: Settings) -> Path:
    return settings.vocab_file or settings.dataset_dir / "vocab.txt"


def stock_arguments(settings: Settings) -> list[str]:
    """Every setting f5-tts_finetune-cli (1.1.22) accepts, as its options."""
    if settings.model_preset not in STOCK_PRESETS:
        raise ConfigError(
            f"MODEL_PRESET={settings.model_preset} is not available in TRAINER_MODE=stock",
            f"use one of {', '.join(STOCK_PRESETS)}, or TRAINER_MODE=safe",
        )
    arguments = [
        "--exp_name", settings.model_preset,
        "--dataset_name", settings.dataset_name,
        "--learning_rate", repr(settings.learning_rate),
        "--batch_size_per_gpu", str(settings.batch_size),
        "--batch_size_type", settings.batch_size_type,
        "--max_samples", str(settings.max_samples),
        "--grad_accumulation_steps", str(settings.grad_accumulation_steps),
        "--max_grad_norm", repr(settings.max_grad_norm),
        "--epochs", str(settings.epochs),
        "--num_warmup_updates", str(settings.warmup_updates),
        "--save_per_updates", str(settings.save_every_updates),
        "--keep_last_n_checkpoints", str(settings.keep_checkpoints),
        "--last_per_updates", str(settings.last_every_updates),
        "--tokenizer", settings.tokenizer,
    ]  # fmt: skip
    if settings.tokenizer == "custom":
        arguments += ["--tokenizer_path", str(vocab_file_for(settings))]
    if settings.logger != "none":
        arguments += ["--logger", settings.logger]
    if settings.pretrained_checkpoint is not None:
        # Without --pretrain, --finetune would download the base model from a hub at run time.
        arguments += ["--finetune", "--pretrain", str(settings.pretrained_checkpoint)]
    return arguments


def build_trainer_argv(settings: Settings, *, processes: int) -> list[str]:
    """The command line of the trainer for this run."""
    if processes < 1:
        raise ConfigError(f"training needs at least one process, got {processes}")
    if settings.trainer_mode == "stock":
        if processes > 1:
            return [*_launcher(processes, settings), "-m", STOCK_MODULE, *stock_arguments(settings)]
        script = Path(sys.executable).with_name(STOCK_SCRIPT)
        return [str(script) if script.is_file() else STOCK_SCRIPT, *stock_arguments(settings)]
    if processes > 1:
        return [*_launcher(processes, settings), "-m", "entrypoint.train"]
    return [sys.executable, "-m", "entrypoint.train"]


def f5_tts_root() -> Path:
    """The folder F5-TTS resolves `files("f5_tts")/../..` to, found without importing it."""
    spec = importlib.util.find_spec("f5_tts")
    if spec is None or not spec.submodule_search_locations:
        raise CheckFailed(
            "F5-TTS (package f5_tts) is not installed", "install the trainer extras: pip install '.[trainer]'"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    return Path(os.path.normpath(package / ".." / ".."))


def stock_links(settings: Settings, root: Path | None = None) -> list[tuple[Path, Path]]:
    """(link, target) pairs: where stock F5-TTS looks -> where our settings point."""
    root = f5_tts_root() if root is None else root
    return [
        (root / "ckpts" / settings.dataset_name, settings.output_dir),
        (root / "data" / f"{settings.dataset_name}_{settings.tokenizer}", settings.dataset_dir),
    ]


def _point_link(link: Path, target: Path, apply: bool) -> str:
    if link.is_symlink():
        current = Path(os.readlink(link))
        if current == target:
            return f"{link} already points to {target}"
        if apply:
            # Replace the link atomically (a new link renamed over it); the data it pointed to is untouched.
            temp = link.with_name(f".{link.name}.relink-{os.getpid()}")
            temp.symlink_to(target, target_is_directory=True)
            os.replace(temp, link)
        return (
            f"{link} re-pointed from {current} to {target}"
            if apply
            else (f"would re-point {link} from {current} to {target}")
        )
    if link.exists():
        if link.is_dir() and not any(link.iterdir()):
            if apply:
                link.rmdir()
                link.symlink_to(target, target_is_directory=True)
            return (
                f"{link} was an empty folder, now points to {target}"
                if apply
                else f"would replace the empty folder {link} with a link to {target}"
            )
        raise CheckFailed(
            f"{link} exists and is not a link: stock F5-TTS would use it instead of {target}",
            "move its contents into the folder the settings name, remove it, and start again",
        )
    if apply:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)
        return f"{link} now points to {target}"
    return f"would link {link} to {target}"


def prepare_stock_layout(settings: Settings, *, apply: bool) -> list[str]:
    """Point stock F5-TTS's package-relative ckpts/ and data/ folders at OUTPUT_DIR and DATASET_DIR.

    Returns one line per link saying what was done (apply=True) or would be done (apply=False).
    """
    lines = []
    for link, target in stock_links(settings):
        try:
            lines.append(_point_link(link, target, apply))
        except PermissionError as error:
            raise CheckFailed(
                f"cannot create {link} for stock F5-TTS: {error.strerror}",
                "run as a user who may write next to the installed f5_tts package, or use TRAINER_MODE=safe",
            ) from None
    return lines
