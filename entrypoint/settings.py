"""Every variable the project reads: its name, type, default, meaning and the error for a bad value.

Values come from a `.env` file (python-dotenv) and the process environment, which wins, as Compose does.
Everything else in the project receives a typed `Settings`, never `os.environ`.
"""

from __future__ import annotations

import difflib
import io
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from entrypoint import naming
from entrypoint.errors import ConfigError
from entrypoint.handoff import ENV_NAMES as HANDOFF_NAMES
from entrypoint.presets import PRESET_NAMES

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE = {"0", "false", "no", "off"}
CHECKPOINT_SOURCE_NAMES = ("last", "numbered", "backups", "pretrained")


@dataclass(frozen=True)
class Spec:
    """How one environment variable is parsed and documented."""

    name: str
    kind: str  # int | float | bool | path | list | choice | str
    default: str
    help: str
    group: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False  # an empty value means "not set" (None)
    pattern: str = ""  # for str: a regular expression the whole value must match
    pattern_help: str = ""
    non_empty: bool = False  # for list: at least one item
    shell_words: bool = False  # for str: must split like a shell command line (shlex)

    def allowed(self) -> str:
        """Plain words for what this variable accepts, used in error messages and the README."""
        if self.kind == "int":
            what = "a whole number"
        elif self.kind == "float":
            what = "a number"
        elif self.kind == "bool":
            what = "true or false (also 1/0, yes/no, on/off)"
        elif self.kind == "path":
            what = "a file system path"
        elif self.kind == "list":
            what = "a comma-separated list" if not self.non_empty else "a non-empty comma-separated list"
            if self.choices:
                what += " of " + ", ".join(self.choices)
        elif self.kind == "choice":
            what = "one of " + ", ".join(self.choices)
        else:
            what = self.pattern_help or "text"
        if self.minimum is not None and self.maximum is not None:
            what += f" from {_num(self.minimum)} to {_num(self.maximum)}"
        elif self.minimum is not None:
            what += f" >= {_num(self.minimum)}"
        elif self.maximum is not None:
            what += f" <= {_num(self.maximum)}"
        if self.optional:
            what += ", or empty"
        return what


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _setting(kind: str, default: str, help: str, group: str, **options: Any) -> Any:
    return field(metadata={"spec": (kind, default, help, group, options)})


@dataclass(frozen=True)
class Settings:
    """Typed settings. Field `foo_bar` is read from variable `FOO_BAR`."""

    # --- locations -------------------------------------------------------------------------------------
    output_dir: Path = _setting(
        "path", "data/output", "Where checkpoints and the preflight report are written (read-write).", "paths"
    )
    backup_dir: Path = _setting(
        "path", "data/backups", "Verified copies of model_last.pt (ideally another disk).", "paths"
    )
    dataset_dir: Path = _setting(
        "path", "data/dataset", "Prepared dataset: raw.arrow, duration.json (and vocab.txt).", "paths"
    )
    pretrained_checkpoint: Path | None = _setting(
        "path",
        "",
        "Pretrained checkpoint to fine-tune from (.pt or .safetensors); empty for none.",
        "paths",
        optional=True,
    )
    log_dir: Path = _setting(
        "path", "data/logs", "training.log (preflight and trainer) and tensorboard events.", "paths"
    )
    quarantine_dir: Path | None = _setting(
        "path",
        "",
        "Folder (same file system) that receives bad checkpoints; empty: rename in place "
        "to <name>.corrupted.",
        "paths",
        optional=True,
    )
    vocab_file: Path | None = _setting(
        "path", "", "Vocabulary file; empty: <DATASET_DIR>/vocab.txt.", "model", optional=True
    )

    # --- CPUs and workers --------------------------------------------------------------------------------
    dataloader_workers: int = _setting(
        "int",
        "8",
        "DataLoader workers wanted per training process; clamped to the usable CPUs.",
        "cpu",
        minimum=1,
        maximum=256,
    )
    cpu_reserve: int = _setting(
        "int",
        "1",
        "CPUs not given to DataLoader workers (left to the training process and the system).",
        "cpu",
        minimum=0,
        maximum=256,
    )
    cpu_limit: float | None = _setting(
        "float",
        "",
        "Override of the usable CPU count (wins over cgroups and affinity).",
        "cpu",
        minimum=0.01,
        maximum=4096,
        optional=True,
    )
    torch_threads: int | None = _setting(
        "int",
        "",
        "Threads for torch/OpenMP/MKL in each training process; empty: derived from CPUs.",
        "cpu",
        minimum=1,
        maximum=4096,
        optional=True,
    )

    # --- checks --------------------------------------------------------------------------------------------
    require_gpu: bool = _setting("bool", "false", "Fail (exit 3) when no NVIDIA GPU is visible.", "checks")
    shm_per_worker_mb: int = _setting(
        "int",
        "256",
        "Shared memory (/dev/shm) each DataLoader worker may need, in MB.",
        "checks",
        minimum=0,
        maximum=1_000_000,
    )
    checkpoint_size_gb: float | None = _setting(
        "float",
        "",
        "Expected size of one checkpoint for the disk check; empty: largest one present, "
        "else from the model preset.",
        "checks",
        minimum=0,
        maximum=100_000,
        optional=True,
    )
    allow_unknown_chars: bool = _setting(
        "bool",
        "false",
        "Train even when the dataset's text has characters the vocabulary lacks (F5-TTS reads them as "
        "index 0); false: exit 3 and name them.",
        "checks",
    )
    wait_timeout_s: float = _setting(
        "float",
        "30",
        "How long to wait for a missing mount or a file that is still growing.",
        "checks",
        minimum=0,
        maximum=86_400,
    )

    # --- checkpoints ------------------------------------------------------------------------------------
    checkpoint_sources: tuple[str, ...] = _setting(
        "list",
        "last,numbered,backups,pretrained",
        "Where to look for the checkpoint to load, in order.",
        "checkpoints",
        choices=CHECKPOINT_SOURCE_NAMES,
        non_empty=True,
    )
    prefer_newest: bool = _setting(
        "bool",
        "true",
        "Load the valid training checkpoint with the highest update among the sources "
        "(false: the first valid one in CHECKPOINT_SOURCES order; TRAINER_MODE=stock always keeps that order).",
        "checkpoints",
    )
    allow_scratch: bool = _setting(
        "bool",
        "false",
        "Start from random weights when no valid checkpoint exists (else exit 3).",
        "checkpoints",
    )
    deep_verify: bool = _setting(
        "bool", "true", "Check every CRC32 of the checkpoint that will be loaded.", "checkpoints"
    )
    load_verify: bool = _setting(
        "bool",
        "false",
        "Also torch.load(weights_only=True, mmap=True) the chosen checkpoint (needs torch).",
        "checkpoints",
    )

    # --- trainer -------------------------------------------------------------------------------------------
    trainer_mode: str = _setting(
        "choice",
        "safe",
        "safe: our crash-safe driver of F5-TTS's Trainer; stock: f5-tts_finetune-cli.",
        "trainer",
        choices=("safe", "stock"),
    )
    trainer_command: str = _setting(
        "str",
        "",
        "Command to exec instead of the built-in trainer (split like a shell would).",
        "trainer",
        shell_words=True,
    )
    train_processes: int | None = _setting(
        "int",
        "",
        "Training processes (one per GPU); empty: the number of visible GPUs, at least 1.",
        "trainer",
        minimum=1,
        maximum=64,
        optional=True,
    )
    dataset_name: str = _setting(
        "str",
        "my_dataset",
        "Dataset name (stock mode reads data/<name>_<tokenizer>).",
        "trainer",
        pattern=r"[A-Za-z0-9_.-]+",
        pattern_help="letters, digits, '_', '.', '-'",
    )
    model_preset: str = _setting(
        "choice",
        "F5TTS_v1_Base",
        "Model architecture, as F5-TTS's fine-tuning CLI defines it.",
        "model",
        choices=PRESET_NAMES,
    )
    tokenizer: str = _setting(
        "choice",
        "custom",
        "Tokenizer: custom uses VOCAB_FILE as is.",
        "model",
        choices=("pinyin", "char", "custom"),
    )
    learning_rate: float = _setting("float", "1e-5", "Peak learning rate.", "trainer", minimum=0, maximum=1)
    batch_size: int = _setting(
        "int",
        "3200",
        "Batch size per GPU (frames or samples, see BATCH_SIZE_TYPE).",
        "trainer",
        minimum=1,
        maximum=10_000_000,
    )
    batch_size_type: str = _setting(
        "choice", "frame", "Unit of BATCH_SIZE.", "trainer", choices=("frame", "sample")
    )
    max_samples: int = _setting(
        "int", "64", "Most samples in one frame-based batch.", "trainer", minimum=1, maximum=100_000
    )
    grad_accumulation_steps: int = _setting(
        "int", "1", "Gradient accumulation steps.", "trainer", minimum=1, maximum=10_000
    )
    max_grad_norm: float = _setting(
        "float", "1.0", "Gradient clipping norm.", "trainer", minimum=0, maximum=1e6
    )
    warmup_updates: int = _setting(
        "int", "20000", "Learning-rate warm-up, in updates.", "trainer", minimum=0, maximum=100_000_000
    )
    epochs: int = _setting("int", "100", "Epochs to train.", "trainer", minimum=1, maximum=1_000_000)
    max_updates: int = _setting(
        "int",
        "0",
        "Stop after this many updates in total (0: no limit, run all epochs).",
        "trainer",
        minimum=0,
        maximum=1_000_000_000,
    )
    save_every_updates: int = _setting(
        "int",
        "50000",
        "Numbered checkpoint model_<update>.pt every N updates.",
        "trainer",
        minimum=1,
        maximum=1_000_000_000,
    )
    last_every_updates: int = _setting(
        "int", "5000", "model_last.pt every N updates.", "trainer", minimum=1, maximum=1_000_000_000
    )
    keep_checkpoints: int = _setting(
        "int",
        "3",
        "Numbered checkpoints kept (-1: all, 0: none); the newest valid one is never removed.",
        "trainer",
        minimum=-1,
        maximum=1_000_000,
    )
    backup_every_updates: int = _setting(
        "int",
        "5000",
        "Verified backup of model_last.pt into BACKUP_DIR every N updates (0: never).",
        "trainer",
        minimum=0,
        maximum=1_000_000_000,
    )
    backup_keep: int = _setting(
        "int", "3", "Backups kept in BACKUP_DIR (newest first).", "trainer", minimum=1, maximum=1_000_000
    )
    mixed_precision: str = _setting(
        "choice",
        "bf16",
        "Mixed precision on the GPU (the CPU always trains in fp32).",
        "trainer",
        choices=("no", "fp16", "bf16"),
    )
    logger: str = _setting(
        "choice",
        "tensorboard",
        "Training metrics logger (tensorboard writes into LOG_DIR).",
        "trainer",
        choices=("none", "tensorboard", "wandb"),
    )
    seed: int = _setting("int", "666", "Random seed.", "trainer", minimum=0, maximum=2**32 - 1)

    # --- guards against a run that hangs, loops or diverges --------------------------------------------
    stall_timeout_s: float | None = _setting(
        "float",
        "",
        "Stop the trainer (exit 7) when no update completes for this long (saves and backups not counted); "
        "empty: 20 x the slowest recent update, at least STALL_MIN_S; 0: never.",
        "guards",
        minimum=0,
        maximum=7 * 86400,
        optional=True,
    )
    stall_min_s: float = _setting(
        "float",
        "900",
        "Floor of the automatic stall timeout, and the timeout until the first updates have been timed.",
        "guards",
        minimum=1,
        maximum=7 * 86400,
    )
    dataloader_timeout_s: float = _setting(
        "float",
        "600",
        "A batch not delivered by a DataLoader worker within this long is a stall (exit 7); 0: wait forever.",
        "guards",
        minimum=0,
        maximum=7 * 86400,
    )
    non_finite_limit: int = _setting(
        "int",
        "5",
        "Stop (exit 6) without saving when the loss or gradient norm is NaN/Inf this many updates in a row "
        "(0: never stop; a non-finite state is still never saved).",
        "guards",
        minimum=0,
        maximum=1_000_000,
    )
    crash_loop_limit: int = _setting(
        "int",
        "3",
        "`run` refuses (exit 3) when this many starts in a row resumed from the same update and failed "
        "without a new save (0: never; `preflight run --force` overrides once).",
        "guards",
        minimum=0,
        maximum=1000,
    )

    # --- several machines (docs/proxmox.md) -------------------------------------------------------------
    num_machines: int = _setting(
        "int", "1", "Machines training together (1: this machine alone).", "cluster", minimum=1, maximum=1024
    )
    machine_rank: int = _setting(
        "int",
        "0",
        "This machine's number, 0 to NUM_MACHINES-1; machine 0 chooses the checkpoint and saves. Machine N > 0 "
        "writes only .train-machine-N.lock, preflight/machine-N/ and training-machine-N.log, so the machines "
        "may share OUTPUT_DIR and LOG_DIR.",
        "cluster",
        minimum=0,
        maximum=1023,
    )
    main_process_ip: str = _setting(
        "str",
        "",
        "Address of machine 0 that the others reach (needed when NUM_MACHINES > 1).",
        "cluster",
        pattern=r"[A-Za-z0-9][A-Za-z0-9.:-]*",
        pattern_help="an IP address or host name",
    )
    main_process_port: int = _setting(
        "int",
        "29500",
        "Port of machine 0 for the rendezvous; the preflights meet on the next port (+1).",
        "cluster",
        minimum=1,
        maximum=65534,
    )
    nccl_socket_ifname: str = _setting(
        "str",
        "",
        "Network interface NCCL uses between machines (NCCL's own variable, passed on as is).",
        "cluster",
        pattern=r"[\^=]?[A-Za-z0-9_.:-]+(,[A-Za-z0-9_.:-]+)*",
        pattern_help="interface names such as eth1 or ^docker0,lo",
    )
    gloo_socket_ifname: str = _setting(
        "str",
        "",
        "Network interface Gloo uses between machines (Gloo's own variable, passed on as is).",
        "cluster",
        pattern=r"[A-Za-z0-9_.:-]+(,[A-Za-z0-9_.:-]+)*",
        pattern_help="interface names such as eth1",
    )
    nccl_infiniband: bool = _setting(
        "bool",
        "false",
        "Let NCCL use InfiniBand/RoCE between machines (false: NCCL_IB_DISABLE=1, plain TCP).",
        "cluster",
    )
    collective_timeout_s: float = _setting(
        "float",
        "300",
        "How long a collective may wait for another process (on this or another machine) before all stop.",
        "cluster",
        minimum=10,
        maximum=86_400,
    )
    link_gbit_s: float = _setting(
        "float",
        "10",
        "Link speed between machines in Gbit/s, for the preflight's estimate of time spent communicating.",
        "cluster",
        minimum=0.001,
        maximum=10_000,
    )

    # --- Compose (read by compose.yaml; validated here so a typo is caught) ------------------------------
    gpu_count: str = _setting(
        "str",
        "all",
        "GPUs reserved by compose.yaml (ignored when GPU_DEVICE_IDS is set).",
        "compose",
        pattern=r"all|[1-9][0-9]*",
        pattern_help="'all' or a whole number >= 1",
    )
    gpu_device_ids: tuple[str, ...] = _setting(
        "list", "", "GPU ids or UUIDs for compose.yaml (instead of GPU_COUNT).", "compose"
    )
    shm_size: str = _setting(
        "str",
        "8gb",
        "Shared memory of the container (compose shm_size).",
        "compose",
        pattern=r"[0-9]+(\.[0-9]+)?\s*([bkmgBKMG]|[kmgKMG][bB])?",
        pattern_help="a size such as 8gb, 512m or 2147483648",
    )

    pretrained_dir: Path = _setting(
        "path",
        "data/pretrained",
        "Host folder compose.yaml mounts read-only at data/pretrained; "
        "PRETRAINED_CHECKPOINT names a file inside it (data/pretrained/<file>).",
        "compose",
    )
    train_image: str = _setting(
        "str",
        "f5tts-train:local",
        "Image name compose.yaml builds and runs.",
        "compose",
        pattern=r"[A-Za-z0-9][A-Za-z0-9._/:@-]*",
        pattern_help="an image reference such as f5tts-train:local",
    )
    app_uid: int = _setting(
        "int",
        "1000",
        "Numeric user the image runs as (build argument; match the owner of the folders).",
        "compose",
        minimum=1,
        maximum=2**31 - 1,
    )
    app_gid: int = _setting(
        "int",
        "1000",
        "Numeric group the image runs as (build argument).",
        "compose",
        minimum=1,
        maximum=2**31 - 1,
    )
    wheelhouse: str = _setting(
        "str",
        "",
        "Folder of wheels in the project folder for air-gapped builds; empty: the package index.",
        "compose",
    )
    tensorboard_port: int = _setting(
        "int",
        "6006",
        "Local port of the tensorboard service (docker compose up -d tensorboard).",
        "compose",
        minimum=1,
        maximum=65535,
    )

    @property
    def vocab_path(self) -> Path:
        """VOCAB_FILE, else the vocab.txt prepare_csv_wavs writes into DATASET_DIR."""
        return self.vocab_file or self.dataset_dir / "vocab.txt"

    @property
    def state_dir(self) -> Path:
        """Where this machine's preflight keeps its reports, run ledger and records (naming.state_dir)."""
        return naming.state_dir(self.output_dir, self.machine_rank)

    @property
    def lock_name(self) -> str:
        return naming.lock_name(self.machine_rank)

    @property
    def log_file(self) -> Path:
        return self.log_dir / naming.log_file_name(self.machine_rank)

    def describe(self) -> dict[str, str]:
        """The values as strings, for reports (every field is safe to show: secrets are not settings)."""
        shown: dict[str, str] = {}
        for spec in SPECS:
            value = getattr(self, spec.name.lower())
            if value is None:
                shown[spec.name] = ""
            elif isinstance(value, tuple):
                shown[spec.name] = ",".join(value)
            else:
                shown[spec.name] = str(value)
        return shown


def _build_specs() -> tuple[Spec, ...]:
    specs = []
    for item in fields(Settings):
        kind, default, help_text, group, options = item.metadata["spec"]
        specs.append(Spec(item.name.upper(), kind, default, help_text, group, **options))
    return tuple(specs)


SPECS: tuple[Spec, ...] = _build_specs()
SPEC_BY_NAME: dict[str, Spec] = {spec.name: spec for spec in SPECS}

# Variables that are ours but are not settings: typo warnings must not fire on them.
OTHER_KNOWN_NAMES = (
    "ENV_FILE",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
    *HANDOFF_NAMES,
    "WANDB_API_KEY",
    "HF_TOKEN",
)


def parse_value(spec: Spec, raw: str, origin: str = "", base: Path | None = None) -> Any:
    """Parse one raw string into the spec's type, or raise ConfigError with a one-line message."""
    text = raw.strip()

    def bad() -> ConfigError:
        where = f" (from {origin})" if origin else ""
        return ConfigError(f"{spec.name}={raw!r}{where} is not allowed: expected {spec.allowed()}.")

    if text == "" and (spec.optional or spec.kind == "str" or (spec.kind == "list" and not spec.non_empty)):
        return None if spec.optional else ((), "")[spec.kind == "str"]
    if spec.kind == "int":
        try:
            value: Any = int(text, 10)
        except ValueError:
            raise bad() from None
    elif spec.kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise bad() from None
        if value != value or value in (float("inf"), float("-inf")):
            raise bad()
    elif spec.kind == "bool":
        lowered = text.lower()
        if lowered in TRUE_WORDS:
            return True
        if lowered in _FALSE:
            return False
        raise bad()
    elif spec.kind == "path":
        if not text or "\x00" in text:
            raise bad()
        path = Path(os.path.expanduser(text))
        return Path(os.path.abspath(base / path if base is not None else path))
    elif spec.kind == "list":
        items = tuple(item.strip() for item in text.split(",") if item.strip())
        if spec.choices and any(item not in spec.choices for item in items):
            raise bad()
        if spec.choices and len(set(items)) != len(items):
            raise bad()
        if spec.non_empty and not items:
            raise bad()
        return items
    elif spec.kind == "choice":
        if text not in spec.choices:
            raise bad()
        return text
    else:
        if spec.pattern and not re.fullmatch(spec.pattern, text):
            raise bad()
        if spec.shell_words:
            try:
                shlex.split(text)
            except ValueError as error:
                where = f" (from {origin})" if origin else ""
                raise ConfigError(
                    f"{spec.name}={raw!r}{where} is not allowed: {error} (write it as a shell command line)."
                ) from None
        return text
    if spec.minimum is not None and value < spec.minimum:
        raise bad()
    if spec.maximum is not None and value > spec.maximum:
        raise bad()
    return value


@dataclass(frozen=True)
class LoadedSettings:
    """Settings plus where they came from and what looked wrong without being fatal."""

    settings: Settings
    env_file: Path | None
    origins: dict[str, str]  # variable name -> "default" | ".env" | "environment"
    warnings: tuple[str, ...]
    file_values: dict[str, str]  # every KEY=value the .env file held (secrets included, never printed)


def resolve_env_file(cli_env_file: str | None, environ: Mapping[str, str]) -> tuple[Path | None, bool]:
    """The .env to read and whether it was asked for explicitly (a missing explicit file is an error)."""
    if cli_env_file:
        return Path(cli_env_file), True
    if environ.get("ENV_FILE"):
        return Path(environ["ENV_FILE"]), True
    default = Path(".env")
    return (default if default.is_file() else None), False


# A settings file is a page of KEY=value lines (.env.example: 128 lines, 8 KB). Far past that it is the wrong
# file (a dataset, a log, a binary), and python-dotenv's variable expansion is quadratic in the number of
# variables (40,000 lines: minutes): refused in one line before any parsing.
ENV_FILE_MAX_BYTES = 1024 * 1024
ENV_FILE_MAX_LINES = 5000


def read_env_text(env_file: Path) -> str:
    """The text of a .env file within the budget above; ConfigError when it cannot be read or is too large."""
    budget_fix = "point --env-file or ENV_FILE at the .env file with your settings (see .env.example)"
    try:
        with open(env_file, "rb") as handle:
            data = handle.read(ENV_FILE_MAX_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"cannot read env file {str(env_file)!r}: {error}") from None
    if len(data) > ENV_FILE_MAX_BYTES:
        raise ConfigError(
            f"env file {str(env_file)!r} is larger than {ENV_FILE_MAX_BYTES // (1024 * 1024)} MiB: "
            "no settings file is that large",
            budget_fix,
        )
    lines = data.count(b"\n") + (not data.endswith(b"\n") and bool(data))
    if lines > ENV_FILE_MAX_LINES:
        raise ConfigError(
            f"env file {str(env_file)!r} has {lines} lines, more than the {ENV_FILE_MAX_LINES} any settings "
            "file needs",
            budget_fix,
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"cannot read env file {str(env_file)!r}: {error}") from None


def _read_env_file(env_file: Path) -> dict[str, str]:
    """KEY=value pairs of a .env file; a line python-dotenv cannot parse is an error, not a silent skip."""
    text = read_env_text(env_file)
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            # Never echo the line: it may hold a secret. Its first word is enough to find it.
            first = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)", binding.original.string)
            what = f"the line starting with {first.group(1)}" if first else "this line"
            raise ConfigError(
                f"{env_file}:{binding.original.line}: cannot parse {what}",
                "write KEY=value (quote values with spaces, close every quote; # starts a comment)",
            )
    raw_values = dotenv_values(stream=io.StringIO(text))
    return {key: value or "" for key, value in raw_values.items()}


def load_settings(
    environ: Mapping[str, str] | None = None, cli_env_file: str | None = None
) -> LoadedSettings:
    """Read the .env file and the environment (which wins) into typed Settings."""
    environ = os.environ if environ is None else environ
    env_file, explicit = resolve_env_file(cli_env_file, environ)
    file_values: dict[str, str] = {}
    if env_file is not None:
        if not env_file.is_file():
            if explicit:
                raise ConfigError(
                    f"env file {str(env_file)!r} does not exist or is not a file",
                    "pass an existing file with --env-file or ENV_FILE, or copy .env.example to .env",
                )
        else:
            file_values = _read_env_file(env_file)

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for spec in SPECS:
        if spec.name in environ:
            raw, origin = environ[spec.name], "environment"
        elif spec.name in file_values:
            raw, origin = file_values[spec.name], str(env_file)
        else:
            raw, origin = spec.default, "default"
        # Paths written in the file are relative to the file's folder, as Compose reads them; paths from the
        # environment and the defaults are relative to the working directory.
        base = env_file.parent if env_file is not None and origin == str(env_file) else None
        values[spec.name.lower()] = parse_value(spec, raw, "" if origin == "default" else origin, base)
        origins[spec.name] = origin
    settings = Settings(**values)
    warnings = _typo_warnings(file_values, environ, env_file)
    warnings += _consistency_warnings(settings)
    return LoadedSettings(settings, env_file, origins, tuple(warnings), file_values)


def _typo_warnings(
    file_values: Mapping[str, str], environ: Mapping[str, str], env_file: Path | None
) -> list[str]:
    known = set(SPEC_BY_NAME) | set(OTHER_KNOWN_NAMES)
    candidates = sorted(SPEC_BY_NAME)
    warnings = []
    seen: set[str] = set()
    for source, keys in ((str(env_file), file_values.keys()), ("environment", environ.keys())):
        for key in keys:
            if key in known or key in seen:
                continue
            close = difflib.get_close_matches(key.upper(), candidates, n=1, cutoff=0.85)
            if close:
                seen.add(key)
                warnings.append(
                    f"{key} (in {source}) is not a setting of ours; did you mean {close[0]}? It is ignored."
                )
    return warnings


def _consistency_warnings(settings: Settings) -> list[str]:
    _check_cluster(settings)
    warnings = []
    if settings.gpu_device_ids and settings.gpu_count != "all":
        warnings.append("GPU_COUNT and GPU_DEVICE_IDS are both set: compose uses GPU_DEVICE_IDS only.")
    return warnings


def _check_cluster(settings: Settings) -> None:
    """Machine settings that cannot work together are a ConfigError (exit 2), found before anything runs."""
    if settings.machine_rank >= settings.num_machines:
        raise ConfigError(
            f"MACHINE_RANK={settings.machine_rank} is not allowed with NUM_MACHINES={settings.num_machines}: "
            f"expected 0 to {settings.num_machines - 1}."
        )
    if settings.num_machines == 1:
        return
    if not settings.main_process_ip:
        raise ConfigError(
            f"NUM_MACHINES={settings.num_machines} needs MAIN_PROCESS_IP: the address of machine 0.",
            "set MAIN_PROCESS_IP to machine 0's address on the network between the machines",
        )
    if settings.trainer_mode != "safe":
        raise ConfigError(
            "TRAINER_MODE=stock cannot train on several machines: F5-TTS would load a checkpoint from each "
            "machine's own disk.",
            "use TRAINER_MODE=safe (machine 0 loads the checkpoint and sends it to the others)",
        )
