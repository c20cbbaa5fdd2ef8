"""The preflight command end to end, as a user runs it: a real process, real folders, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_helpers import env_args, preflight, write_dataset
from tests.mounts import tmpfs

ROOT = Path(__file__).resolve().parents[2]
SECRET = "wandb-secret-0123456789abcdef"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "dataset")
    (tmp_path / "test.env").write_text(
        f"OUTPUT_DIR={tmp_path / 'output'}\nBACKUP_DIR={tmp_path / 'backups'}\nLOG_DIR={tmp_path / 'logs'}\n"
        f"DATASET_DIR={tmp_path / 'dataset'}\nALLOW_SCRATCH=true\nMODEL_PRESET=tiny\n"
        f"WANDB_API_KEY={SECRET}\n"
    )
    return tmp_path


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def test_bad_setting_exits_2_with_one_line(workspace: Path) -> None:
    done = preflight(workspace, "check", *env_args(workspace), env={"DATALOADER_WORKERS": "sixteen"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATALOADER_WORKERS='sixteen'" in lines[0] and "whole number" in lines[0]
    assert "Traceback" not in done.stderr


def test_missing_env_file_exits_2(workspace: Path) -> None:
    done = preflight(workspace, "check", "--env-file", str(workspace / "nope.env"))
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_check_reports_and_changes_nothing(workspace: Path) -> None:
    before = snapshot(workspace)
    done = preflight(workspace, "check", "--json", *env_args(workspace), env={"CPU_LIMIT": "1.5"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] in ("ok", "warn") and report["mode"] == "check"
    assert report["cpu"]["usable"] == 1 and report["cpu"]["usable_exact"] == 1.5
    assert "CPU_LIMIT" in report["cpu"]["source"]
    assert report["cpu"]["workers"] == 1 and report["cpu"]["threads"] == 1
    names = {check["name"] for check in report["checks"]}
    assert {"settings", "cpu", "gpu", "shm", "ulimits", "init", "dataset", "checkpoint"} <= names
    assert report["checkpoint"]["kind"] == "scratch" and report["checkpoint"]["chosen"] is None
    assert report["trainer"]["argv"]
    assert snapshot(workspace) == before


def test_check_text_puts_failures_first_and_ends_with_the_next_step(workspace: Path) -> None:
    done = preflight(workspace, "check", *env_args(workspace))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.rstrip("\n").splitlines()
    assert lines[-1].startswith("next: start training") and lines[-2].startswith("summary: ")
    assert "  OK    cpu" in done.stdout or "  WARN  cpu" in done.stdout
    failing = preflight(
        workspace, "check", *env_args(workspace), env={"DATASET_DIR": str(workspace / "none")}
    )
    statuses = [
        line.split()[0]
        for line in failing.stdout.splitlines()[1:]
        if line[:6].strip() in ("OK", "WARN", "FAIL")
    ]
    assert statuses[0] == "FAIL" and statuses == sorted(statuses, key=["FAIL", "WARN", "OK"].index)
    assert failing.stdout.rstrip().splitlines()[-1].startswith("next: dataset:")


def test_check_on_a_terminal_fits_100_columns(workspace: Path) -> None:
    """Through a real pseudo-terminal, as a user sees it; piped (the log, grep) each item stays one line."""
    import pty

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFLIGHT_", "WANDB"))}
    env.pop("ENV_FILE", None)
    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "entrypoint", "check", *env_args(workspace)],
        cwd=workspace,
        env=env,
        stdin=child,
        stdout=child,
        stderr=subprocess.DEVNULL,
    )
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    process.wait(timeout=120)
    os.close(main)
    lines = output.decode().replace("\r\n", "\n").rstrip("\n").splitlines()
    assert lines[-1].startswith("next: ") and len(lines) > 10
    too_long = [line for line in lines if len(line) > 100 and len(line.split()) > 2]
    assert too_long == [], too_long  # only a lone path longer than the terminal may stick out


def test_typo_is_reported(workspace: Path) -> None:
    with open(workspace / "test.env", "a") as handle:
        handle.write("DATALOADER_WORKER=2\n")
    done = preflight(workspace, "check", "--json", *env_args(workspace))
    report = json.loads(done.stdout)
    settings = next(check for check in report["checks"] if check["name"] == "settings")
    assert settings["status"] == "warn" and "did you mean DATALOADER_WORKERS" in settings["message"]


def test_require_gpu_without_gpu_exits_3_naming_the_fix(workspace: Path) -> None:
    done = preflight(
        workspace, "check", *env_args(workspace), env={"REQUIRE_GPU": "true", "PATH": "/usr/bin:/bin"}
    )
    assert done.returncode == 3
    assert "REQUIRE_GPU=true" in done.stdout and "NVIDIA Container Toolkit" in done.stdout


def test_several_stock_processes_without_a_gpu_exit_3_naming_the_fix(workspace: Path) -> None:
    env = {
        "TRAIN_PROCESSES": "2",
        "TRAINER_MODE": "stock",
        "MODEL_PRESET": "F5TTS_v1_Base",
        "PATH": "/usr/bin:/bin",
    }
    done = preflight(workspace, "check", *env_args(workspace), env=env)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "TRAIN_PROCESSES=2 without a GPU" in done.stdout and "TRAINER_MODE=safe" in done.stdout
    safe = preflight(workspace, "check", "--json", *env_args(workspace), env={**env, "TRAINER_MODE": "safe"})
    processes = [c for c in json.loads(safe.stdout)["checks"] if c["name"] == "processes"]
    assert [c["status"] for c in processes] == ["ok"], safe.stdout[-2000:]


def test_no_checkpoint_without_scratch_exits_3(workspace: Path) -> None:
    done = preflight(workspace, "check", *env_args(workspace), env={"ALLOW_SCRATCH": "false"})
    assert done.returncode == 3 and "checkpoint" in done.stdout


def test_run_execs_the_command_with_the_planned_environment(workspace: Path) -> None:
    probe = (
        "import json, os, sys; json.dump({'pid': os.getpid(), 'env': {k: v for k, v in os.environ.items()}}, "
        "open(sys.argv[1], 'w'))"
    )
    out = workspace / "child.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "entrypoint",
            "run",
            *env_args(workspace),
            "--",
            sys.executable,
            "-c",
            probe,
            str(out),
        ],
        cwd=workspace,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PREFLIGHT_")}, "CPU_LIMIT": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    child = json.loads(out.read_text())
    assert child["pid"] == process.pid  # exec, not a child process: signals reach the trainer directly
    env = child["env"]
    assert env["PREFLIGHT_WORKERS"] == "1" and env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "2"
    assert env["PREFLIGHT_CHECKPOINT_KIND"] == "scratch" and env["PREFLIGHT_CHECKPOINT"] == ""
    assert env["MODEL_PRESET"] == "tiny"  # .env values reach the trainer
    assert env["WANDB_API_KEY"] == SECRET  # the trainer gets the secret ...
    report_text = (workspace / "output" / "preflight" / "report.json").read_text()
    log_text = (workspace / "logs" / "training.log").read_text()
    for shown in (stdout, stderr, report_text, log_text):  # ... nothing shows it
        assert SECRET not in shown
    assert "summary:" in log_text
    assert json.loads(report_text)["mode"] == "run"


def test_secret_in_the_command_line_is_redacted(workspace: Path) -> None:
    done = preflight(
        workspace, "check", "--json", *env_args(workspace), env={"TRAINER_COMMAND": f"train --key {SECRET}"}
    )
    assert SECRET not in done.stdout + done.stderr
    assert json.loads(done.stdout)["trainer"]["argv"] == ["train", "--key", "***"]


def test_custom_secret_names_are_redacted(workspace: Path) -> None:
    value = "s3cr3t-value-for-db"
    done = preflight(
        workspace, "check", *env_args(workspace), env={"DB_PASSWORD": value, "TRAINER_COMMAND": f"x {value}"}
    )
    assert value not in done.stdout + done.stderr


def test_missing_trainer_fails_the_check_before_anything_changes(workspace: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.ckpt_factory import make_training_checkpoint, truncate

    output = workspace / "output"
    make_training_checkpoint(output / "model_last.pt", update=10, preset="tiny", vocab_size=3)
    truncate(output / "model_last.pt", 1000)
    done = preflight(workspace, "run", *env_args(workspace), "--", "no-such-trainer-binary")
    assert done.returncode == 3 and "'no-such-trainer-binary' not found on PATH" in done.stdout
    assert "Traceback" not in done.stderr
    assert (output / "model_last.pt").exists() and not list(output.glob("*.corrupted"))


def test_exec_failure_after_the_checks_exits_4(workspace: Path) -> None:
    broken = workspace / "trainer.sh"
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)
    done = preflight(workspace, "run", *env_args(workspace), "--", str(broken))
    assert done.returncode == 4 and "its interpreter (/nonexistent/interpreter) does not" in done.stderr
    assert "Traceback" not in done.stderr


def test_trainer_that_is_a_folder(workspace: Path) -> None:
    done = preflight(workspace, "check", *env_args(workspace), env={"TRAINER_COMMAND": str(workspace)})
    assert done.returncode == 3 and "is a folder, not a program" in done.stdout


def test_secret_in_a_bad_value_is_redacted_in_the_error(workspace: Path) -> None:
    done = preflight(
        workspace,
        "check",
        *env_args(workspace),
        env={"HF_TOKEN": "hf_abcdef123456", "LEARNING_RATE": "hf_abcdef123456"},
    )
    assert done.returncode == 2 and "LEARNING_RATE='***'" in done.stderr
    assert "hf_abcdef123456" not in done.stderr + done.stdout


def test_settings_command_redacts_secrets_inside_values(workspace: Path) -> None:
    done = preflight(
        workspace, "settings", *env_args(workspace), env={"TRAINER_COMMAND": f"train --key {SECRET}"}
    )
    assert done.returncode == 0 and SECRET not in done.stdout and "train --key ***" in done.stdout


def test_dash_dash_only_for_run(workspace: Path) -> None:
    done = preflight(workspace, "check", *env_args(workspace), "--", "true")
    assert done.returncode == 2


def test_settings_command_lists_origins(workspace: Path) -> None:
    done = preflight(workspace, "settings", *env_args(workspace), env={"SEED": "5"})
    assert done.returncode == 0
    assert any(
        line.startswith("SEED") and "5" in line and "(environment)" in line
        for line in done.stdout.splitlines()
    )
    assert SECRET not in done.stdout


def test_the_exec_d_program_s_output_reaches_the_log_redacted(workspace: Path) -> None:
    script = 'echo "trainer says hello"; echo "trainer warns" >&2; printf "bar 1\\rbar 2\\n"; echo "key=$WANDB_API_KEY"'
    done = preflight(workspace, "run", *env_args(workspace), "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert "trainer says hello" in done.stdout and "trainer warns" in done.stderr
    assert "key=***" in done.stdout and SECRET not in done.stdout + done.stderr
    log = (workspace / "logs" / "training.log").read_text()
    assert "trainer says hello\n" in log and "trainer warns\n" in log and "key=***\n" in log
    assert "\nbar 2\n" in log and "\nbar 1" not in log  # a progress bar's final state only
    assert log.count("summary:") == 1  # the preflight's own lines are logged once
    assert SECRET not in log


def test_validate_vocab_file_needs_a_preset(workspace: Path) -> None:
    done = preflight(workspace, "validate", "--vocab-file", str(workspace / "dataset" / "vocab.txt"), "x.pt")
    assert done.returncode == 2 and "--vocab-file needs --preset" in done.stderr


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small-logs", "64k") as mount_point:
        yield mount_point


def test_a_full_logs_volume_never_stops_the_trainer(workspace: Path, tiny_tmpfs: Path) -> None:
    lines = 5000
    program = (
        f"import sys\nfor i in range({lines}): print(f'training line {{i:05d}} ' + 'x' * 40)\nsys.exit(0)"
    )
    done = preflight(
        workspace,
        "run",
        *env_args(workspace),
        "--",
        sys.executable,
        "-c",
        program,
        env={"LOG_DIR": str(tiny_tmpfs)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith("training line")]
    assert len(printed) == lines  # the terminal got every line although the log volume filled up
    assert done.stderr.count("WARNING: log file not written from here on: No space left on device") == 1
    assert (tiny_tmpfs / "training.log").stat().st_size > 0


def test_one_trainer_per_output_dir(workspace: Path) -> None:
    holder_code = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "os.write(fd, b'pid 4242 on other-host since then'); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('locked', flush=True); sys.stdin.read()"
    )
    (workspace / "output").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(workspace / "output" / ".train.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        report = workspace / "output" / "preflight" / "report.json"
        report.parent.mkdir(parents=True)
        report.write_text('{"held by": "the running trainer"}')
        checked = preflight(workspace, "check", *env_args(workspace))
        # `check` says what `run` would do: stop.
        assert checked.returncode == 3 and "another trainer is using" in checked.stdout
        done = preflight(workspace, "run", *env_args(workspace), "--", "true")
        assert done.returncode == 3 and "pid 4242 on other-host" in done.stdout
        assert report.read_text() == '{"held by": "the running trainer"}'  # the holder's report is kept
    finally:
        holder.communicate("", timeout=30)
    # Released (the holder ended): the run takes the lock and the trainer it execs holds it.
    probe = "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY)\ntry:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('free')\nexcept BlockingIOError:\n    print('held')"
    done = preflight(
        workspace,
        "run",
        *env_args(workspace),
        "--",
        sys.executable,
        "-c",
        probe,
        str(workspace / "output" / ".train.lock"),
    )
    assert done.returncode == 0 and "held" in done.stdout.splitlines()[-1]


def test_builtin_trainer_without_f5_tts_installed(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from entrypoint.commands.common import make_plan
    from entrypoint.settings import load_settings

    real_find_spec = importlib.util.find_spec

    def without_f5_tts(name: str, *args: object, **kwargs: object) -> object:
        return None if name == "f5_tts" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_f5_tts)
    loaded = load_settings({}, cli_env_file=str(workspace / "test.env"))
    plan = make_plan(loaded, environ={"PATH": os.environ["PATH"]})
    trainer = next(check for check in plan.checks if check.name == "trainer")
    assert trainer.status == "fail" and "F5-TTS and torch are not installed" in trainer.message
    # `check` says exactly what `run` would do: nothing, and no trainer start.
    assert plan.status == "fail" and plan.actions == () and plan.handoff is None
    assert not (workspace / "output" / ".train.lock").exists()


def test_trainer_gets_the_paths_the_preflight_resolved(tmp_path: Path) -> None:
    project = tmp_path / "project"
    write_dataset(project / "ds")
    (project / ".env").write_text(
        "OUTPUT_DIR=out\nDATASET_DIR=ds\nLOG_DIR=logs\nBACKUP_DIR=bk\nALLOW_SCRATCH=true\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = preflight(
        elsewhere,
        "run",
        "--env-file",
        str(project / ".env"),
        "--",
        "sh",
        "-c",
        'echo "OUT=$OUTPUT_DIR DS=$DATASET_DIR"',
    )
    assert done.returncode == 0, done.stderr
    assert f"OUT={project / 'out'} DS={project / 'ds'}" in done.stdout


def test_check_json_gives_each_check_its_cost_in_milliseconds(workspace: Path) -> None:
    done = preflight(workspace, "check", "--json", *env_args(workspace))
    report = json.loads(done.stdout)
    costs = {check["name"]: check["ms"] for check in report["checks"]}
    probed = (
        "cpu",
        "gpu",
        "shm",
        "writable-output",
        "disk-output",
        "dataset",
        "trainer",
        "lock",
        "checkpoint",
    )
    assert all(isinstance(costs[name], float) and costs[name] >= 0 for name in probed), costs
    assert costs["settings"] is None  # decided from the settings alone: nothing to measure
