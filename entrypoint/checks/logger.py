"""The metrics logger can start: wandb without a key is silently switched off by F5-TTS."""

from __future__ import annotations

from collections.abc import Mapping

from entrypoint.checks.result import OK, WARN, CheckResult


def check_logger(logger: str, environ: Mapping[str, str], file_values: Mapping[str, str]) -> CheckResult:
    if logger == "wandb" and not (environ.get("WANDB_API_KEY") or file_values.get("WANDB_API_KEY")):
        return CheckResult(
            "logger",
            WARN,
            "LOGGER=wandb but WANDB_API_KEY is not set: F5-TTS turns metrics logging off without saying so",
            "set WANDB_API_KEY in .env (it is never shown in reports or logs), or LOGGER=tensorboard",
        )
    where = {"tensorboard": " (events in LOG_DIR)", "none": " (no metrics)"}.get(logger, "")
    return CheckResult("logger", OK, f"LOGGER={logger}{where}")
