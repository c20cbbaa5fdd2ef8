"""What `check` and `run` share: settings, probes, the checkpoint decision and the plan."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping

from entrypoint.checkpoints.resolve import plan_checkpoint
from entrypoint.checkpoints.validate import Expectation
from entrypoint.cpu_plan import plan_cpu
from entrypoint.facts import gather_facts
from entrypoint.machines import follower_checkpoint_plan
from entrypoint.modes import mode_for
from entrypoint.plan import Plan, plan_preflight
from entrypoint.readiness import fingerprint_check
from entrypoint.redact import Redactor, secret_values
from entrypoint.settings import LoadedSettings


def add_env_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", help="settings file (default: $ENV_FILE, else ./.env)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def redactor_for(loaded: LoadedSettings, environ: Mapping[str, str] | None = None) -> Redactor:
    return Redactor(secret_values(os.environ if environ is None else environ, loaded.file_values))


def make_plan(
    loaded: LoadedSettings,
    *,
    command: list[str] | None = None,
    wait: bool = False,
    environ: Mapping[str, str] | None = None,
    force: bool = False,
) -> Plan:
    """Probe, decide the checkpoint (reads only), and plan. Nothing on disk changes."""
    environ = os.environ if environ is None else environ
    settings = loaded.settings
    facts = gather_facts(loaded, environ, command=command, wait=wait)
    start = time.perf_counter()
    # The deep check may use every core the container has: nothing else runs yet.
    cores = plan_cpu(facts.cpu, override=settings.cpu_limit, reserve=0, requested_workers=1).usable
    if settings.machine_rank > 0:
        checkpoint = follower_checkpoint_plan(settings)  # machine 0 alone decides, and sends the state
    else:
        checkpoint = plan_checkpoint(
            settings,
            mode_for(settings),
            expect=Expectation(settings.model_preset, facts.vocab_size),
            threads=cores,
        )
    facts.cost_ms["checkpoint"] = (time.perf_counter() - start) * 1000
    fingerprint = None
    if facts.readiness_data:
        fingerprint = fingerprint_check(
            settings,
            settings.vocab_path,
            facts.processes,
            facts.readiness_data,
            checkpoint_kind=checkpoint.kind,
            update=checkpoint.update,
        )
    return plan_preflight(loaded, facts, checkpoint, environ, fingerprint, force=force)
