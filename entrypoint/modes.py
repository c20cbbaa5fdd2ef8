"""TRAINER_MODE as two strategies behind one interface: what each mode adds to the plan. Torch-free.

- safe: our crash-safe driver of F5-TTS's Trainer. It is told the chosen file by path (the handoff), so the
  plan adds nothing on disk for it.
- stock: F5-TTS's own `f5-tts_finetune-cli`. It picks a checkpoint by name in a package-relative folder,
  always starts 16 DataLoader workers and rewrites model_last.pt in place, so the plan arranges the folder
  (quarantine what its rule would land on, place the chosen file where it looks, give a hard-linked
  model_last.pt its own copy, point its folders at ours) and checks afterwards that its rule lands right.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from entrypoint import actions as act
from entrypoint.actions import Action
from entrypoint.checks.result import FAIL, WARN, CheckResult
from entrypoint.errors import ConfigError
from entrypoint.files import same_file
from entrypoint.naming import LAST_NAME
from entrypoint.presets import STOCK_PRESETS

if TYPE_CHECKING:
    from entrypoint.checkpoints.discover import Candidate, Discovery
    from entrypoint.checkpoints.resolve import Check, _Planner
    from entrypoint.checkpoints.select import Choice
    from entrypoint.settings import Settings

STOCK_CLI_WORKERS = 16  # f5-tts_finetune-cli never passes num_workers, so Trainer.train's default applies
STOCK_SCRIPT = "f5-tts_finetune-cli"
STOCK_MODULE = "f5_tts.train.finetune_cli"
SAFE_MODULE = "entrypoint.train"
MACHINES_LAUNCHER_MODULE = "entrypoint.train.launcher"
EXIT_WAIT_OPTION = "--exit-wait-s"  # entrypoint.train.launcher's own option, before Accelerate's
EXIT_WAIT_MAX_S = 60.0
STOP_WAIT_OPTION = "--stop-wait-s"
# After a stop signal, how long the launcher lets its trainers finish their final save before it kills them
# (torch's own is 30 s, short for a 5 GB save on a slow disk): under compose.yaml's stop_grace_period (180 s),
# so the launcher, not Docker's SIGKILL, ends the container.
STOP_WAIT_S = 170.0


def _launcher(processes: int, mixed_precision: str, num_machines: int = 1) -> list[str]:
    """`accelerate launch` for several processes (one per GPU), from the same environment as Python."""
    accelerate = Path(sys.executable).with_name("accelerate")
    return [
        str(accelerate) if accelerate.is_file() else "accelerate",
        "launch",
        "--num_processes",
        str(processes),
        "--num_machines",
        str(num_machines),
        "--mixed_precision",
        mixed_precision,
        "--dynamo_backend",
        "no",
    ]


def machines_launcher(settings: Settings, processes: int) -> list[str]:
    """Accelerate's launch across NUM_MACHINES machines with `processes` on each: torchrun's static rendezvous
    at MAIN_PROCESS_IP:MAIN_PROCESS_PORT, no restarts inside the container (its restart policy restarts the
    whole node, preflight included). --multi_gpu is Accelerate's name for "several processes": on machines
    without a GPU the processes train on the CPU over Gloo. It runs through `entrypoint.train.launcher`, which
    bounds torchrun's exit barrier (exit_wait_s) and exits with the trainer's own code."""
    launcher = _launcher(processes * settings.num_machines, settings.mixed_precision, settings.num_machines)
    return [
        *_our_launcher(exit_wait_s(settings)),
        "--multi_gpu",
        *launcher[2:],
        "--machine_rank",
        str(settings.machine_rank),
        "--main_process_ip",
        settings.main_process_ip,
        "--main_process_port",
        str(settings.main_process_port),
        "--rdzv_backend",
        "static",
        "--max_restarts",
        "0",
    ]


def processes_launcher(settings: Settings, processes: int) -> list[str]:
    """`accelerate launch` of `processes` on this machine. Without --multi_gpu, Accelerate starts them only
    when it sees more than one GPU: on the CPU (or one GPU) it would start a single process and train alone
    while the plan counts `processes`. Port 0: a free port for the rendezvous, so two trainers on one
    machine (other OUTPUT_DIRs) do not meet on Accelerate's fixed default port."""
    launcher = _launcher(processes, settings.mixed_precision)
    return [*_our_launcher(EXIT_WAIT_MAX_S), "--multi_gpu", *launcher[2:], "--main_process_port", "0"]


def _our_launcher(exit_wait: float) -> list[str]:
    """Accelerate's launch run by entrypoint.train.launcher: bounded exit barrier, a stop save given
    STOP_WAIT_S, and the trainer's own exit code in one line instead of a traceback."""
    return [
        sys.executable,
        "-m",
        MACHINES_LAUNCHER_MODULE,
        EXIT_WAIT_OPTION,
        f"{exit_wait:g}",
        STOP_WAIT_OPTION,
        f"{STOP_WAIT_S:g}",
    ]


def exit_wait_s(settings: Settings) -> float:
    """How long a machine whose trainer ended well waits for the other machines' launchers (torchrun's exit
    barrier, 300 s in torch): they have only their own exit left, as every trainer ends at the same update and
    only machine 0 saves. A machine later than COLLECTIVE_TIMEOUT_S would have been given up by a collective
    anyway; and never more than EXIT_WAIT_MAX_S."""
    return min(settings.collective_timeout_s, EXIT_WAIT_MAX_S)


class SafeMode:
    name = "safe"
    folder_copy_first = False

    def strict_order_reason(self, settings: Settings) -> str:
        return ""

    def workers(self, planned: int) -> int:
        return planned

    def argv(self, settings: Settings, processes: int) -> list[str]:
        if processes < 1:
            raise ConfigError(f"training needs at least one process, got {processes}")
        if settings.num_machines > 1:
            return [*machines_launcher(settings, processes), "-m", SAFE_MODULE]
        if processes > 1:
            return [*processes_launcher(settings, processes), "-m", SAFE_MODULE]
        return [sys.executable, "-m", SAFE_MODULE]

    def environment(self, settings: Settings, mixed_precision: str) -> dict[str, str]:
        return {}

    def arrange(
        self,
        planner: _Planner,
        settings: Settings,
        found: Discovery,
        candidates: Sequence[Candidate],
        choice: Choice,
        load_path: Path,
        check: Check,
    ) -> Path | str:
        """The load path after any placement; a "message\\nfix" string when it cannot be arranged."""
        return load_path

    def scratch_problem(self, planner: _Planner, settings: Settings) -> str:
        return ""

    def layout(self, settings: Settings, root: Path | None = None) -> tuple[list[Action], CheckResult | None]:
        return [], None

    def verify(self, settings: Settings, load_path: str | None) -> CheckResult | None:
        return None

    def cpu_note(self, planned_workers: int) -> CheckResult | None:
        return None


class StockMode(SafeMode):
    name = "stock"
    folder_copy_first = True  # what F5-TTS reads is its pretrained_* copy: the one worth verifying deeply

    def strict_order_reason(self, settings: Settings) -> str:
        if not settings.prefer_newest:
            return ""
        return (
            "TRAINER_MODE=stock keeps that order: F5-TTS loads model_last.pt whenever it exists; "
            "use TRAINER_MODE=safe to load the newest"
        )

    def workers(self, planned: int) -> int:
        return STOCK_CLI_WORKERS

    def argv(self, settings: Settings, processes: int) -> list[str]:
        if processes < 1:
            raise ConfigError(f"training needs at least one process, got {processes}")
        arguments = stock_arguments(settings)
        if processes > 1:
            return [*_launcher(processes, settings.mixed_precision), "-m", STOCK_MODULE, *arguments]
        script = Path(sys.executable).with_name(STOCK_SCRIPT)
        return [str(script) if script.is_file() else STOCK_SCRIPT, *arguments]

    def environment(self, settings: Settings, mixed_precision: str) -> dict[str, str]:
        # F5-TTS's own CLI takes mixed precision from accelerate's environment, not from an option.
        return {"ACCELERATE_MIXED_PRECISION": mixed_precision}

    def arrange(
        self,
        planner: _Planner,
        settings: Settings,
        found: Discovery,
        candidates: Sequence[Candidate],
        choice: Choice,
        load_path: Path,
        check: Check,
    ) -> Path | str:
        from entrypoint.checkpoints.f5_rule import f5_choice
        from entrypoint.checkpoints.install import plan_stock

        assert choice.candidate is not None and choice.verdict is not None
        folder = settings.output_dir
        _clear_stock_folder(planner, folder, candidates, choice.candidate, load_path, check)
        for stray in found.strays:
            if not planner.moved(stray):
                planner.notes.append(
                    f"{stray} is not a checkpoint name the preflight uses, but F5-TTS's stock trainer considers it"
                )
        names = planner.names_after(folder)
        name, how = plan_stock(folder, load_path, choice.verdict, names)
        if name is None:
            shown = f5_choice(names)
            loads = shown.name or shown.error or "nothing"
            return (
                f"F5-TTS's stock trainer would load {loads} from {folder}, not the chosen {load_path} ({how})\n"
                f"move the files it would pick out of {folder} (or fix their permissions), "
                "or use TRAINER_MODE=safe, which loads the chosen file by path"
            )
        target = folder / name
        if how != "in place":
            kind = act.INSTALL_LINK if how == "link" else act.INSTALL_COPY
            planner.actions.append(
                Action(kind, load_path, target, "where F5-TTS's stock rule will load it", required=True)
            )
        _note_write_through(planner, target)
        problem = _own_copy(planner, folder / LAST_NAME)
        return problem or target

    def scratch_problem(self, planner: _Planner, settings: Settings) -> str:
        from entrypoint.checkpoints.f5_rule import f5_choice

        # F5-TTS's stock trainer starts fresh only when no loadable name is left in its folder.
        left = f5_choice(planner.names_after(settings.output_dir))
        if left.starts_fresh:
            return ""
        return (
            f"F5-TTS's stock trainer would still try to load {left.name or left.error} "
            f"from {settings.output_dir}"
        )

    def layout(self, settings: Settings, root: Path | None = None) -> tuple[list[Action], CheckResult | None]:
        """Point stock F5-TTS's package-relative ckpts/ and data/ folders at OUTPUT_DIR and DATASET_DIR."""
        root = root or f5_tts_root()
        if root is None:
            return [], CheckResult(
                "stock-layout",
                FAIL,
                "F5-TTS (package f5_tts) is not installed",
                "install the trainer extras: pip install '.[trainer]'",
            )
        planned = []
        for link, target in stock_links(settings, root):
            if link.is_symlink():
                if Path(os.readlink(link)) != target:
                    planned.append(Action(act.LINK_FOLDER, link, target, "re-point", required=True))
            elif link.exists():
                if not (link.is_dir() and not any(link.iterdir())):
                    return [], CheckResult(
                        "stock-layout",
                        FAIL,
                        f"{link} exists and is not a link: stock F5-TTS would use it instead of {target}",
                        "move its contents into the folder the settings name, remove it, and start again",
                    )
                planned.append(
                    Action(act.LINK_FOLDER, link, target, "replace an empty folder", required=True)
                )
            else:
                planned.append(Action(act.LINK_FOLDER, link, target, "", required=True))
        return planned, None

    def verify(self, settings: Settings, load_path: str | None) -> CheckResult | None:
        """After the actions: F5-TTS's own rule, applied to the real folder, lands on the chosen file."""
        from entrypoint.checkpoints.f5_rule import f5_choice_in

        landed = f5_choice_in(settings.output_dir)
        if load_path is None:
            if landed.starts_fresh:
                return None
            return CheckResult(
                "checkpoint",
                FAIL,
                f"no valid checkpoint, but F5-TTS's stock trainer would still try to load "
                f"{landed.name or landed.error} from {settings.output_dir}",
                "make OUTPUT_DIR writable so bad files can be quarantined, or move them out, "
                "or use TRAINER_MODE=safe",
            )
        if landed.name is not None and same_file(settings.output_dir / landed.name, Path(load_path)):
            return None
        return CheckResult(
            "checkpoint",
            FAIL,
            f"F5-TTS's stock trainer would load {landed.name or landed.error or 'nothing'} instead of {load_path}",
            "move the other checkpoint files out of OUTPUT_DIR or use TRAINER_MODE=safe",
        )

    def cpu_note(self, planned_workers: int) -> CheckResult | None:
        if planned_workers >= STOCK_CLI_WORKERS:
            return None
        return CheckResult(
            "cpu",
            WARN,
            f"TRAINER_MODE=stock: F5-TTS's CLI always starts {STOCK_CLI_WORKERS} workers; "
            f"the plan would be {planned_workers}",
            "use TRAINER_MODE=safe, which applies the worker plan",
        )


MODES = {"safe": SafeMode(), "stock": StockMode()}


def mode_for(settings: Settings) -> SafeMode:
    return MODES[settings.trainer_mode]


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
        arguments += ["--tokenizer_path", str(settings.vocab_path)]
    if settings.logger != "none":
        arguments += ["--logger", settings.logger]
    if settings.pretrained_checkpoint is not None:
        # Without --pretrain, --finetune would download the base model from a hub at run time.
        arguments += ["--finetune", "--pretrain", str(settings.pretrained_checkpoint)]
    return arguments


def f5_tts_root() -> Path | None:
    """The folder F5-TTS resolves `files("f5_tts")/../..` to, found without importing it."""
    spec = importlib.util.find_spec("f5_tts")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    return Path(os.path.normpath(package / ".." / ".."))


def stock_links(settings: Settings, root: Path) -> list[tuple[Path, Path]]:
    """(link, target) pairs: where stock F5-TTS looks -> where our settings point."""
    return [
        (root / "ckpts" / settings.dataset_name, settings.output_dir),
        (root / "data" / f"{settings.dataset_name}_{settings.tokenizer}", settings.dataset_dir),
    ]


def _clear_stock_folder(
    planner: _Planner,
    folder: Path,
    candidates: Sequence[Candidate],
    chosen: Candidate,
    load_path: Path,
    check: Callable[..., object],
) -> None:
    """Quick-check every other entry F5-TTS's rule could land on; quarantine the bad ones."""
    from entrypoint.checkpoints.f5_rule import f5_choice
    from entrypoint.checkpoints.resolve import _failed_level
    from entrypoint.checkpoints.select import blocking_kind

    by_path = {c.path: c for c in candidates}
    seen: set[str] = set()
    for _ in range(len(candidates) + 2):
        result = f5_choice(planner.names_after(folder))
        names = [n for n in (result.name, *result.ambiguous) if n is not None and n not in seen]
        names = [n for n in names if not same_file(folder / n, load_path)]
        if not names:
            return
        for name in names:
            seen.add(name)
            path = folder / name
            candidate = by_path.get(path)
            if candidate is None or candidate is chosen or not os.path.isfile(path):
                continue
            verdict = check(path, False, chosen.size)
            if blocking_kind(verdict) is not None:  # type: ignore[arg-type]
                # Not damage (another model, or unreadable): never quarantined.
                planner.notes.append(f"{path} was left in place: {verdict.cause}")  # type: ignore[attr-defined]
            elif not verdict.valid:  # type: ignore[attr-defined]
                planner.move_away(
                    path,
                    verdict.cause,  # type: ignore[attr-defined]
                    _failed_level(verdict, "quick"),  # type: ignore[arg-type]
                    verdict.details,  # type: ignore[attr-defined]
                )


def _note_write_through(planner: _Planner, load_path: Path) -> None:
    """F5-TTS's stock trainer rewrites model_last.pt in place: through a symlink, into another file."""
    if load_path.name == LAST_NAME and load_path.is_symlink():
        planner.notes.append(
            f"{load_path} is a link: F5-TTS's stock trainer will overwrite the file it points to when it "
            "saves; replace the link with a copy to keep that file"
        )


def _own_copy(planner: _Planner, last: Path) -> str:
    """A hard-linked model_last.pt (our backups link it) gets its own copy before the stock trainer rewrites it
    in place; returns a failure ("message\\nfix") when there is no room for that copy."""
    from entrypoint.checkpoints.install import COPY_MARGIN_BYTES

    if planner.moved(last) or last.is_symlink():
        return ""
    try:
        info = last.stat()
    except OSError:
        return ""
    if info.st_nlink < 2:
        return ""
    what = f"{last.name} shares its data with {info.st_nlink - 1} other name(s) (hard-linked backups)"
    free = shutil.disk_usage(last.parent).free
    if free < info.st_size + COPY_MARGIN_BYTES:
        return (
            f"{what}, and there is no room for a private copy ({free / 1e9:.1f} GB free): the stock trainer "
            "would overwrite the backup\nfree space in OUTPUT_DIR or use TRAINER_MODE=safe"
        )
    planner.actions.append(
        Action(
            act.OWN_COPY,
            last,
            None,
            f"{what}: so the stock trainer cannot overwrite the backup",
            required=True,
        )
    )
    return ""
