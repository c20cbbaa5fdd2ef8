"""Odd and hostile files next to the checkpoints, through the real `preflight` process: a verdict and a
documented exit code, never a traceback, and nothing damaged."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import env_args, preflight, write_dataset
from tests.mounts import bind_mount

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "dataset")
    (tmp_path / "output").mkdir()
    (tmp_path / "test.env").write_text(
        f"OUTPUT_DIR={tmp_path / 'output'}\nBACKUP_DIR={tmp_path / 'backups'}\nLOG_DIR={tmp_path / 'logs'}\n"
        f"DATASET_DIR={tmp_path / 'dataset'}\nALLOW_SCRATCH=true\nMODEL_PRESET=tiny\n"
    )
    return tmp_path


def test_a_verdict_cache_nested_too_deep_is_ignored_with_a_warning(workspace: Path) -> None:
    cache = workspace / "output" / "preflight" / "verdict-cache.json"
    cache.parent.mkdir()
    cache.write_text("[" * 100_000 + "]" * 100_000)
    done = preflight(workspace, "check", *env_args(workspace))
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0
    assert f"verdict cache {cache} is not valid (nested too deep); ignored" in done.stdout + done.stderr


@pytest.mark.parametrize(
    "pid",
    ["2147483648", "9999999999", "9" * 200],
    ids=["pid_t-max-plus-1", "10-digit", "200-digit"],
)
def test_an_unfinished_save_named_with_an_impossible_pid_is_no_crash(workspace: Path, pid: str) -> None:
    temp = workspace / "output" / f".model_last.pt.partial-{pid}-0badc0de"
    temp.write_bytes(b"PK\x03\x04 cut off after a few bytes")
    done = preflight(workspace, "check", *env_args(workspace))
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode in (0, 3), done.stdout + done.stderr
    assert temp.read_bytes() == b"PK\x03\x04 cut off after a few bytes"  # a check changes nothing
    # No process can have that number: the file is judged like any dead writer's (here: cut off).
    assert "unfinished save" in done.stdout and temp.name in done.stdout


def test_a_lock_symlink_to_a_backup_stops_the_run_and_the_backup_survives(workspace: Path) -> None:
    backup = workspace / "backups" / "model_1000.pt"
    backup.parent.mkdir()
    backup.write_bytes(b"PK\x03\x04 the only backup" * 1000)
    (workspace / "output" / ".train.lock").symlink_to(backup)
    done = preflight(workspace, "run", *env_args(workspace), "--", "true")
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert "is a symlink" in done.stdout and "remove the link" in done.stdout
    assert backup.read_bytes() == b"PK\x03\x04 the only backup" * 1000


@pytest.mark.parametrize("shape", ["40000-lines", "12-MB-one-line"])
def test_a_settings_file_far_too_large_is_refused_in_one_line(workspace: Path, shape: str) -> None:
    env_file = workspace / "test.env"
    settings = env_file.read_text()
    if shape == "40000-lines":
        # Each line a variable: python-dotenv's expansion alone took minutes on this.
        env_file.write_text(settings + "".join(f"VAR_{i}=value_{i}\n" for i in range(40_000)))
    else:
        env_file.write_text(settings + "NOTES=" + "x" * 12_000_000 + "\n")
    done = preflight(workspace, "check", *env_args(workspace))  # the helper's timeout is the time bound
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(env_file) in lines[0] and "Traceback" not in done.stderr
    assert "--env-file" in lines[0]


def test_a_large_but_plausible_settings_file_is_still_read(workspace: Path) -> None:
    from entrypoint.settings import ENV_FILE_MAX_LINES

    env_file = workspace / "test.env"
    settings = env_file.read_text()
    filler = "".join(f"# note {i}\n" for i in range(ENV_FILE_MAX_LINES - settings.count("\n")))
    env_file.write_text(filler + settings)
    done = preflight(workspace, "check", *env_args(workspace))
    assert done.returncode == 0, done.stdout + done.stderr


PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
    "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n"
    "-----END PRIVATE KEY-----"
)
CREDENTIAL = '{\n  "type": "service_account",\n  "private_key_id": "9f8e7d6c5b4a3210"\n}'


def test_a_multi_line_secret_printed_by_the_trainer_reaches_neither_log_nor_terminal(workspace: Path) -> None:
    with (workspace / "test.env").open("a") as env_file:
        env_file.write(f'SERVICE_KEY="{PEM}"\n')  # a quoted multi-line value, as python-dotenv reads it
    # Printed whole, then again after 65,500 bytes so that it straddles the copier's 64 KiB reads, then the
    # JSON credential in several writes of its own.
    program = (
        "import os, sys\n"
        "out = sys.stdout.buffer\n"
        "out.write(('key: ' + os.environ['SERVICE_KEY'] + '\\n').encode()); out.flush()\n"
        "out.write(b'x' * 65500 + ('again: ' + os.environ['SERVICE_KEY'] + '\\n').encode()); out.flush()\n"
        "for line in os.environ['GCP_CREDENTIALS'].splitlines(keepends=True):\n"
        "    out.write(line.encode()); out.flush()\n"
        "out.write(b' was the credential\\n'); out.flush()\n"
    )
    done = preflight(
        workspace,
        "run",
        *env_args(workspace),
        "--",
        sys.executable,
        "-c",
        program,
        env={"GCP_CREDENTIALS": CREDENTIAL},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    log = (workspace / "logs" / "training.log").read_text()
    secret_lines = [line for line in (PEM + "\n" + CREDENTIAL).splitlines() if len(line) > 8]
    for shown in (log, done.stdout, done.stderr):
        assert not [line for line in secret_lines if line in shown]
    assert "key: ***\n" in log and "again: ***\n" in log and "*** was the credential\n" in log
    assert "key: ***\n" in done.stdout and "*** was the credential\n" in done.stdout


def test_a_bind_mounted_quarantine_dir_on_the_same_disk_still_moves_the_bad_file(workspace: Path) -> None:
    output = workspace / "output"
    bad = output / "model_last.pt"
    bad.write_bytes(b"PK\x03\x04" + os.urandom(4096))
    with bind_mount(workspace / "disk" / "quarantine", workspace / "quarantine") as quarantine_dir:
        done = preflight(
            workspace, "run", *env_args(workspace), "--", "true", env={"QUARANTINE_DIR": str(quarantine_dir)}
        )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert not bad.exists() and (output / "model_last.pt.corrupted").exists()
    assert (output / "model_last.pt.corrupted.json").exists()
    assert "separate mount" in done.stdout and "renamed in place" in done.stdout
