"""Settings: types, a bad value for every type, precedence, the env file, typo warnings, the docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrypoint.errors import EXIT_CONFIG, ConfigError
from entrypoint.settings import SPEC_BY_NAME, SPECS, load_settings, parse_value
from entrypoint.settings_docs import env_example, markdown_table

ROOT = Path(__file__).resolve().parents[2]

BAD_VALUES = [
    ("DATALOADER_WORKERS", "sixteen", "expected a whole number from 1 to 256"),
    ("DATALOADER_WORKERS", "0", "expected a whole number from 1 to 256"),
    ("DATALOADER_WORKERS", "4.5", "expected a whole number"),
    ("CPU_LIMIT", "two", "expected a number from 0.01 to 4096, or empty"),
    ("CPU_LIMIT", "nan", "expected a number"),
    ("CPU_LIMIT", "-1", "expected a number from 0.01"),
    ("REQUIRE_GPU", "maybe", "expected true or false"),
    ("OUTPUT_DIR", "", "expected a file system path"),
    ("OUTPUT_DIR", "bad\x00path", "expected a file system path"),
    (
        "CHECKPOINT_SOURCES",
        "last,newest",
        "expected a non-empty comma-separated list of last, numbered, backups, pretrained",
    ),
    ("CHECKPOINT_SOURCES", "last,last", "expected a non-empty comma-separated list"),
    ("CHECKPOINT_SOURCES", "", "expected a non-empty comma-separated list"),
    ("TRAINER_COMMAND", '"unclosed', "No closing quotation"),
    ("MODEL_PRESET", "F5TTS_v2_Base", "expected one of F5TTS_v1_Base, F5TTS_Base, E2TTS_Base, tiny"),
    ("GPU_COUNT", "some", "expected 'all' or a whole number >= 1"),
    ("SHM_SIZE", "lots", "expected a size such as 8gb"),
    ("KEEP_CHECKPOINTS", "-2", "expected a whole number from -1"),
]


@pytest.mark.parametrize(("name", "raw", "allowed"), BAD_VALUES)
def test_bad_value_is_one_line_naming_variable_value_and_allowed(name: str, raw: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({name: raw}, cli_env_file=None)
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_CONFIG
    assert "\n" not in message
    assert message.startswith(f"{name}={raw!r}")
    assert allowed in message


def test_every_kind_has_a_bad_value_tested() -> None:
    tested_kinds = {SPEC_BY_NAME[name].kind for name, _, _ in BAD_VALUES}
    assert tested_kinds == {spec.kind for spec in SPECS}


def test_defaults_parse_and_types() -> None:
    settings = load_settings({}, cli_env_file=None).settings
    assert settings.dataloader_workers == 8
    assert settings.cpu_limit is None
    assert settings.require_gpu is False
    assert settings.output_dir.is_absolute()
    assert settings.checkpoint_sources == ("last", "numbered", "backups", "pretrained")
    assert settings.pretrained_checkpoint is None
    assert settings.gpu_device_ids == ()


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("YES", True), ("on", True), ("0", False), ("Off", False)]
)
def test_bool_spellings(raw: str, expected: bool) -> None:
    assert parse_value(SPEC_BY_NAME["REQUIRE_GPU"], raw) is expected


def test_environment_wins_over_env_file_and_file_over_default(tmp_path: Path) -> None:
    env_file = tmp_path / "settings.env"
    env_file.write_text("DATALOADER_WORKERS=3\nCPU_RESERVE=2\n")
    loaded = load_settings({"DATALOADER_WORKERS": "5"}, cli_env_file=str(env_file))
    assert loaded.settings.dataloader_workers == 5
    assert loaded.settings.cpu_reserve == 2
    assert loaded.origins["DATALOADER_WORKERS"] == "environment"
    assert loaded.origins["CPU_RESERVE"] == str(env_file)
    assert loaded.origins["SEED"] == "default"


def test_env_file_from_env_file_variable(tmp_path: Path) -> None:
    env_file = tmp_path / "other.env"
    env_file.write_text("SEED=7\n")
    assert load_settings({"ENV_FILE": str(env_file)}).settings.seed == 7


def test_dot_env_in_working_directory_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("SEED=9\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings({}).settings.seed == 9


def test_missing_explicit_env_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({}, cli_env_file=str(tmp_path / "nope.env"))


def test_bad_value_in_env_file_names_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text("BATCH_SIZE_TYPE=frames\n")
    with pytest.raises(ConfigError, match=r"BATCH_SIZE_TYPE='frames' \(from .*x\.env\) is not allowed"):
        load_settings({}, cli_env_file=str(env_file))


def test_typo_warns_with_closest_real_name(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text("DATALOADER_WORKER=4\nOUTPUT_DIRR=/x\nUNRELATED_THING=1\n")
    warnings = load_settings({}, cli_env_file=str(env_file)).warnings
    assert any("DATALOADER_WORKER " in w and "did you mean DATALOADER_WORKERS" in w for w in warnings)
    assert any("did you mean OUTPUT_DIR?" in w for w in warnings)
    assert not any("UNRELATED_THING" in w for w in warnings)


def test_list_and_path_parsing(tmp_path: Path) -> None:
    loaded = load_settings(
        {"CHECKPOINT_SOURCES": " backups , last ", "PRETRAINED_CHECKPOINT": "~/m.pt", "GPU_DEVICE_IDS": "0,2"}
    )
    assert loaded.settings.checkpoint_sources == ("backups", "last")
    assert loaded.settings.pretrained_checkpoint == Path.home() / "m.pt"
    assert loaded.settings.gpu_device_ids == ("0", "2")


def test_unparsable_env_file_line_is_an_error_with_file_and_line(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text('SEED=1\nthis is garbage\nCPU_LIMIT="1.5\n')
    with pytest.raises(ConfigError) as caught:
        load_settings({}, cli_env_file=str(env_file))
    assert f"{env_file}:2: cannot parse the line starting with this" in str(caught.value)
    assert "garbage" not in str(caught.value)  # the line itself is never echoed: it may hold a secret
    assert caught.value.exit_code == EXIT_CONFIG


def test_relative_paths_in_the_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / ".env").write_text("OUTPUT_DIR=data/out\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_settings({"LOG_DIR": "logs"}, cli_env_file=str(project / ".env"))
    assert loaded.settings.output_dir == project / "data" / "out"
    assert loaded.settings.log_dir == elsewhere / "logs"  # from the environment: the working directory


def test_env_example_is_generated_from_the_settings() -> None:
    assert (ROOT / ".env.example").read_text() == env_example()


def test_env_example_defaults_load_cleanly() -> None:
    loaded = load_settings({}, cli_env_file=str(ROOT / ".env.example"))
    assert loaded.warnings == ()
    assert all(origin != "default" for origin in loaded.origins.values())


def test_settings_page_lists_every_variable() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    assert markdown_table() in page


def test_unparsable_secret_line_is_not_echoed(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text("HF_TOKEN hf_secretTOKEN987\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, cli_env_file=str(env_file))
    assert "line starting with HF_TOKEN" in str(caught.value) and "hf_secret" not in str(caught.value)
