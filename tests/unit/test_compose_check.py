"""The Compose checker: the real files pass; each broken variant fails with the line that names it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("yaml", reason="PyYAML (test extra) is needed to read Compose files")

from tools import compose_check
from tools.compose_check import (
    SIGTERM_SAVE_BOUND_S,
    InterpolationError,
    check_files,
    interpolate,
    main,
    parse_duration,
    parse_size,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
CPU = ROOT / "compose.cpu.yaml"
GPU_IDS = ROOT / "compose.gpu-ids.yaml"


def _variant(tmp_path: Path, old: str, new: str, name: str = "compose.yaml") -> Path:
    text = COMPOSE.read_text()
    assert old in text, f"the fixture edit expects {old!r} in compose.yaml"
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


def test_real_files_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(COMPOSE), str(CPU), str(GPU_IDS)]) == 0
    assert "compose check: OK" in capsys.readouterr().out


def test_real_files_pass_with_a_user_env_file(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("GPU_COUNT=2\nGPU_DEVICE_IDS=0,1\nSHM_SIZE=16gb\nOUTPUT_DIR=/mnt/fast/output\n")
    assert (
        check_files([COMPOSE, CPU, GPU_IDS], {"GPU_COUNT": "2", "GPU_DEVICE_IDS": "0,1"}, strict=True) == []
    )
    assert main([str(COMPOSE), str(GPU_IDS), "--env-file", str(env)]) == 0


def test_the_schema_is_applied(tmp_path: Path) -> None:
    pytest.importorskip("jsonschema")
    if compose_check.load_compose_schema() is None:
        pytest.skip("check-jsonschema (test extra) is not installed: no vendored compose-spec.json")
    path = _variant(
        tmp_path, "    init: true\n    # On SIGTERM", "    init: true\n    colour: blue\n    # On SIGTERM"
    )
    problems = check_files([path], {})
    assert any("schema: services.train" in line and "colour" in line for line in problems), problems


def test_count_and_device_ids_together_fail(tmp_path: Path) -> None:
    path = _variant(
        tmp_path, "count: ${GPU_COUNT:-all}\n", 'count: ${GPU_COUNT:-all}\n              device_ids: ["0"]\n'
    )
    problems = check_files([path], {}, use_schema=False)
    assert problems == [
        f"{path}: services.train GPU reservation sets both count and device_ids (Compose rejects that) -- "
        "keep one: GPU_COUNT in compose.yaml, or GPU_DEVICE_IDS with compose.gpu-ids.yaml"
    ]


def test_a_bad_gpu_count_fails(tmp_path: Path) -> None:
    problems = check_files([COMPOSE], {"GPU_COUNT": "two"}, use_schema=False)
    assert any("count is 'two'" in line for line in problems), problems


def test_the_device_ids_override_replaces_the_count() -> None:
    # Without !override the lists would be appended and the merged reservation would hold both.
    assert (
        check_files([COMPOSE, GPU_IDS], {"GPU_DEVICE_IDS": "GPU-5f1c"}, use_schema=False, strict=True) == []
    )


def test_a_missing_required_variable_fails_only_when_checking_a_user_configuration() -> None:
    assert check_files([COMPOSE, GPU_IDS], {}, use_schema=False, strict=False) == []
    problems = check_files([COMPOSE, GPU_IDS], {}, use_schema=False, strict=True)
    assert len(problems) == 1 and "GPU_DEVICE_IDS is required" in problems[0], problems


@pytest.mark.parametrize(
    ("target", "variable"),
    [
        ("/workspace/data/output", "OUTPUT_DIR"),
        ("/workspace/data/backups", "BACKUP_DIR"),
        ("/workspace/data/logs", "LOG_DIR"),
    ],
)
def test_an_unmounted_written_folder_fails(tmp_path: Path, target: str, variable: str) -> None:
    path = _variant(tmp_path, f"target: {target}\n", "target: /somewhere/else\n")
    problems = check_files([path], {}, use_schema=False)
    assert f"{path}: services.train.volumes mounts nothing at {target} ({variable})" in "\n".join(problems)


def test_a_read_only_output_fails(tmp_path: Path) -> None:
    path = _variant(
        tmp_path, "target: /workspace/data/output\n", "target: /workspace/data/output\n    read_only: true\n"
    )
    problems = check_files([path], {}, use_schema=False)
    assert any("mounts /workspace/data/output read-only" in line for line in problems), problems


def test_an_unpinned_container_path_fails(tmp_path: Path) -> None:
    path = _variant(tmp_path, "  BACKUP_DIR: /workspace/data/backups\n", "")
    problems = check_files([path], {}, use_schema=False)
    assert any("does not pin BACKUP_DIR" in line for line in problems), problems


@pytest.mark.parametrize("grace", ["60s", f"{SIGTERM_SAVE_BOUND_S}s", "2m"])
def test_a_short_grace_period_fails(tmp_path: Path, grace: str) -> None:
    path = _variant(tmp_path, "stop_grace_period: 180s", f"stop_grace_period: {grace}")
    problems = check_files([path], {}, use_schema=False)
    assert problems == [
        f"{path}: services.train.stop_grace_period is {grace}, not longer than the trainer's "
        f"{SIGTERM_SAVE_BOUND_S} s save-on-SIGTERM bound -- set it to {SIGTERM_SAVE_BOUND_S + 60}s or more"
    ]


def test_a_missing_grace_period_names_dockers_default(tmp_path: Path) -> None:
    path = _variant(tmp_path, "    stop_grace_period: 180s\n", "")
    problems = check_files([path], {}, use_schema=False)
    assert len(problems) == 1 and "not set (Docker's default is 10s)" in problems[0], problems


def test_no_init_fails(tmp_path: Path) -> None:
    path = _variant(tmp_path, "    init: true\n    # On SIGTERM", "    # On SIGTERM")
    problems = check_files([path], {}, use_schema=False)
    assert len(problems) == 1 and "services.train.init is not true" in problems[0], problems


def test_no_or_default_shared_memory_fails(tmp_path: Path) -> None:
    unset = _variant(tmp_path, "    shm_size: ${SHM_SIZE:-8gb}\n    ulimits:", "    ulimits:")
    assert any("shm_size is not set" in line for line in check_files([unset], {}, use_schema=False))
    small = check_files([COMPOSE], {"SHM_SIZE": "64m"}, use_schema=False)
    assert any("not above Docker's 64 MB default" in line for line in small), small


def test_an_endless_restart_policy_fails(tmp_path: Path) -> None:
    path = _variant(tmp_path, "restart: on-failure:3", "restart: unless-stopped")
    problems = check_files([path], {}, use_schema=False)
    assert any("restart unless-stopped retries without end" in line for line in problems), problems


def test_the_cpu_override_drops_the_gpu_and_the_requirement(tmp_path: Path) -> None:
    assert check_files([COMPOSE, CPU], {}, use_schema=False) == []
    keeps_requirement = tmp_path / "compose.cpu.yaml"
    keeps_requirement.write_text(CPU.read_text().replace('REQUIRE_GPU: "false"', 'REQUIRE_GPU: "true"', 1))
    problems = check_files([COMPOSE, keeps_requirement], {}, use_schema=False)
    assert any("requires a GPU (REQUIRE_GPU=true) but reserves none" in line for line in problems), problems


def test_an_absolute_host_path_passed_through_fails() -> None:
    problems = check_files([COMPOSE], {"PRETRAINED_CHECKPOINT": "/mnt/models/model.pt"}, use_schema=False)
    assert any(
        line.startswith("PRETRAINED_CHECKPOINT=/mnt/models/model.pt is an absolute host path")
        for line in problems
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "QUARANTINE_DIR",
            "quarantine",
            "QUARANTINE_DIR=quarantine is /workspace/quarantine in the container, outside the read-write "
            "output mount (/workspace/data/output): quarantined checkpoints would stay in the container's "
            "writable layer -- leave it empty",
        ),
        (
            "QUARANTINE_DIR",
            "data/backups/quarantine",
            "QUARANTINE_DIR=data/backups/quarantine is /workspace/data/backups/quarantine in the container, "
            "outside the read-write output mount",
        ),
        (
            "VOCAB_FILE",
            "/workspace/vocab.txt",
            "VOCAB_FILE=/workspace/vocab.txt is /workspace/vocab.txt in the container, where nothing is "
            "mounted -- leave it empty for vocab.txt in DATASET_DIR",
        ),
        (
            "PRETRAINED_CHECKPOINT",
            "model.safetensors",
            "PRETRAINED_CHECKPOINT=model.safetensors is /workspace/model.safetensors in the container, where "
            "nothing is mounted -- put the file in PRETRAINED_DIR and name it data/pretrained/<file>",
        ),
        (
            "PRETRAINED_CHECKPOINT",
            "data/pretrained/../model.pt",
            "PRETRAINED_CHECKPOINT=data/pretrained/../model.pt is /workspace/data/model.pt in the container, "
            "where nothing is mounted",
        ),
        ("VOCAB_FILE", "~/vocab.txt", "VOCAB_FILE=~/vocab.txt is an absolute host path"),
    ],
)
def test_a_passed_through_path_outside_the_mounts_fails(variable: str, value: str, expected: str) -> None:
    problems = check_files(
        [COMPOSE, CPU, GPU_IDS], {variable: value, "GPU_DEVICE_IDS": "0"}, use_schema=False
    )
    # One line for the .env, however many configurations are checked.
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("QUARANTINE_DIR", "data/output/quarantine"),
        ("QUARANTINE_DIR", "/workspace/data/output/quarantine"),
        ("VOCAB_FILE", "data/dataset/vocab.txt"),
        ("VOCAB_FILE", "./data/pretrained/vocab.txt"),
        ("PRETRAINED_CHECKPOINT", "data/pretrained/model_1250000.safetensors"),
        ("PRETRAINED_CHECKPOINT", ""),
    ],
)
def test_a_passed_through_path_inside_the_mounts_passes(variable: str, value: str) -> None:
    assert check_files([COMPOSE, CPU], {variable: value}, use_schema=False) == []


def test_a_pinned_path_setting_is_not_checked_against_env(tmp_path: Path) -> None:
    path = _variant(
        tmp_path,
        "  LOG_DIR: /workspace/data/logs\n",
        "  LOG_DIR: /workspace/data/logs\n  QUARANTINE_DIR: /workspace/data/output/quarantine\n",
    )
    assert check_files([path], {"QUARANTINE_DIR": "quarantine"}, use_schema=False) == []


def test_quarantine_follows_the_output_mount(tmp_path: Path) -> None:
    moved = tmp_path / "compose.yaml"
    moved.write_text(
        COMPOSE.read_text()
        .replace("target: /workspace/data/output\n", "target: /workspace/out\n")
        .replace("OUTPUT_DIR: /workspace/data/output", "OUTPUT_DIR: /workspace/out")
    )
    assert check_files([moved], {"QUARANTINE_DIR": "out/quarantine"}, use_schema=False) == []
    problems = check_files([moved], {"QUARANTINE_DIR": "data/output/quarantine"}, use_schema=False)
    assert problems == [
        "QUARANTINE_DIR=data/output/quarantine is /workspace/data/output/quarantine in the container, outside "
        "the read-write output mount (/workspace/out): quarantined checkpoints would stay in the container's "
        "writable layer -- leave it empty (bad checkpoints are then renamed in place to <name>.corrupted) or "
        "use a folder under out/"
    ]


def test_unparsable_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  train:\n    init: [true\n")
    problems = check_files([path], {})
    assert len(problems) == 1 and problems[0].startswith(f"{path}: line ") and "not valid YAML" in problems[0]


def test_exit_code_and_one_line_per_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _variant(tmp_path, "    init: true\n    # On SIGTERM", "    # On SIGTERM")
    assert main([str(path), "--no-schema"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: services.train.init is not true -- set init: true so SIGTERM reaches the trainer and "
        "workers are reaped"
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("180s", 180), ("3m", 180), ("1m30s", 90), ("1h", 3600), ("500ms", 0.5), ("x", None)],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("8gb", 8 * 1024**3), ("512m", 512 * 1024**2), ("2147483648", 2**31), ("lots", None)]
)
def test_parse_size(text: str, size: int | None) -> None:
    assert parse_size(text) == size


def test_interpolation_follows_compose() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$SET $SET", env) == "v d  d $SET v"
    assert interpolate("${SET:+alt} ${EMPTY:+alt}|${UNSET:-${SET}}", env) == "alt |v"
    with pytest.raises(InterpolationError, match="EMPTY is required: give it"):
        interpolate("${EMPTY:?give it}", env)
    assert interpolate("${EMPTY:?give it}", env, strict=False) == "<EMPTY>"
