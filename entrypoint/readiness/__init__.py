"""Fine-tune readiness: the dataset, the vocabulary and the batch plan, checked before any GPU time.

One entry point for the preflight: `readiness_checks(settings, vocab_path, processes)` returns the check
results and the data (batch plan, missing characters, audio facts) for `check --json`. Torch-free; the text
checks need pyarrow (the trainer's environment has it) and say so when they are missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entrypoint.checks.result import FAIL, CheckResult
from entrypoint.readiness.audio_facts import audio_facts
from entrypoint.readiness.batch_plan import RunSettings, check_batch_plan, plan_batches
from entrypoint.readiness.dataset_facts import DatasetUnreadable, probe_dataset
from entrypoint.readiness.text_warnings import check_text
from entrypoint.readiness.vocabulary import check_coverage

EXTEND_HINT = "`preflight vocab extend` (a new vocabulary and checkpoint next to the old ones)"


def readiness_checks(
    settings: Any, vocab_path: Path, processes: int, *, checkpoint_bytes: int = 0
) -> tuple[list[CheckResult], dict[str, Any]]:
    """`settings`: entrypoint.settings.Settings. Never raises for a bad dataset: the results say it."""
    try:
        facts = probe_dataset(settings.dataset_dir)
    except DatasetUnreadable as error:
        # The dataset check names a missing folder or file; a file that is there but unusable fails here.
        if not (settings.dataset_dir / "duration.json").is_file():
            return [], {}
        return [
            CheckResult(
                "batches",
                FAIL,
                f"no batch plan: {error}",
                "prepare the dataset again with f5_tts.train.datasets.prepare_csv_wavs",
            )
        ], {}
    results: list[CheckResult] = []
    data: dict[str, Any] = {"dataset": str(settings.dataset_dir)}
    if facts.text is not None and facts.text.rows != len(facts.durations):
        results.append(
            CheckResult(
                "batches",
                FAIL,
                f"raw.arrow has {facts.text.rows} rows but duration.json {len(facts.durations)} durations",
                "prepare the dataset again (both files come from one prepare_csv_wavs run)",
            )
        )
        return results, data
    audio_result, data["audio"] = audio_facts(facts)
    results.append(audio_result)
    coverage, data["vocabulary"] = check_coverage(
        facts, vocab_path, allow_unknown=settings.allow_unknown_chars, extend_hint=EXTEND_HINT
    )
    results.append(coverage)
    text_results, data["text"] = check_text(facts)
    results += text_results
    if not checkpoint_bytes:
        checkpoint_bytes = _checkpoint_bytes(settings)
    run = RunSettings.from_settings(settings, honour_max_updates=settings.trainer_mode == "safe")
    plan = plan_batches(
        facts.durations,
        run,
        processes,
        row_durations=facts.row_durations,
        checkpoint_bytes=checkpoint_bytes,
    )
    results += check_batch_plan(plan, run)
    data["batch_plan"] = plan.to_json()
    return results, data


def _checkpoint_bytes(settings: Any) -> int:
    """One checkpoint's size for the plan's disk figures: CHECKPOINT_SIZE_GB, else the preset's estimate."""
    from entrypoint.presets import PRESETS

    if settings.checkpoint_size_gb is not None:
        return int(settings.checkpoint_size_gb * 1e9)
    return PRESETS[settings.model_preset].estimated_checkpoint_bytes()


def fingerprint_check(
    settings: Any,
    vocab_path: Path,
    processes: int,
    readiness: dict[str, Any],
    *,
    checkpoint_kind: str,
    update: int | None,
) -> CheckResult | None:
    """Compare the dataset fingerprint with the run that trained the checkpoint being resumed (reads only);
    stores this run's fingerprint in `readiness["fingerprint"]` for `run` to record. None: nothing to compare."""
    from entrypoint.readiness.fingerprint import check_fingerprint, dataset_fingerprint

    report_dir = settings.state_dir
    plan = readiness.get("batch_plan") or {}
    fingerprint = dataset_fingerprint(settings, vocab_path, processes, plan.get("batches_per_process"))
    readiness["fingerprint"] = fingerprint
    return check_fingerprint(report_dir, fingerprint, checkpoint_kind=checkpoint_kind, update=update)
