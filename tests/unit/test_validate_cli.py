"""`preflight validate`: one line or one JSON object per file, exit codes, the progress bar."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from entrypoint.checkpoints import validate_cli
from entrypoint.checkpoints.validate import Expectation
from entrypoint.checkpoints.validate_cli import ProgressBar, run_validate, sibling_reference_size
from tests import ckpt_factory

pytest.importorskip("torch", reason="checkpoints are made with torch.save")
pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpts")
    ckpt_factory.make_training_checkpoint(root / "model_1200.pt", update=1200)
    ckpt_factory.make_training_checkpoint(root / "model_1300.pt", update=1300)
    good = (root / "model_1300.pt").read_bytes()
    (root / "model_last.pt").write_bytes(good[: len(good) // 2])
    ckpt_factory.make_pretrained_checkpoint(root / "pretrained_base.safetensors", fmt="safetensors")
    return root


def test_one_line_per_file_and_exit_1_when_any_is_bad(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [str(folder / n) for n in ("model_1200.pt", "model_last.pt", "pretrained_base.safetensors")]
    code = run_validate(paths, deep=True, as_json=False, load=False, expect=None)
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[0] == f"OK   {paths[0]}  training update 1200  (structure, schema, integrity)"
    size_mb = (folder / "model_last.pt").stat().st_size / 1e6
    assert lines[1] == (
        f"BAD  {paths[1]}  truncated: zip central directory missing ({size_mb:.1f} MB where siblings are 3.6 MB)"
    )
    assert lines[2] == (
        f"OK   {paths[2]}  pretrained  (structure, schema; integrity not checked: "
        "no pretrained_base.safetensors.sha256 sidecar)"
    )


def test_exit_0_when_all_are_valid(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(folder / "model_1200.pt"), str(folder / "pretrained_base.safetensors")]
    assert run_validate(paths, deep=False, as_json=False, load=False, expect=Expectation("tiny", 32)) == 0
    assert "(structure, schema, compatibility)" in capsys.readouterr().out


def test_json_is_a_list_of_verdicts(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(folder / "model_1200.pt"), str(folder / "missing.pt")]
    assert run_validate(paths, deep=False, as_json=True, load=False, expect=None) == 1
    data = json.loads(capsys.readouterr().out)
    assert data == [
        {
            "path": paths[0],
            "valid": True,
            "cause": "",
            "format": "torch-zip",
            "kind": "training",
            "update": 1200,
            "levels": ["structure", "schema"],
            "failure": "",
        },
        {
            "path": paths[1],
            "valid": False,
            "cause": "file not found",
            "format": "unknown",
            "kind": "unknown",
            "update": None,
            "levels": [],
            "failure": "structure",
        },
    ]


def test_reference_size_is_the_median_of_same_suffix_siblings(tmp_path: Path) -> None:
    for name, size in [("a.pt", 10), ("b.pt", 30), ("c.pt", 50), ("d.safetensors", 999), ("e.txt", 999)]:
        (tmp_path / name).write_bytes(b"x" * size)
    assert sibling_reference_size(tmp_path / "a.pt") == 40
    assert sibling_reference_size(tmp_path / "d.safetensors") is None


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_waits_a_second_then_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(validate_cli.time, "monotonic", clock)
    out = io.StringIO()
    bar = ProgressBar("checking model_last.pt", out)
    bar(1_000_000_000, 5_000_000_000)
    assert out.getvalue() == ""  # fast checks show nothing
    clock.now += 2.0
    bar(2_500_000_000, 5_000_000_000)
    bar(2_600_000_000, 5_000_000_000)  # same quarter: no new line on a non-terminal
    bar(5_000_000_000, 5_000_000_000)
    lines = out.getvalue().splitlines()
    assert lines == [
        "checking model_last.pt   50%  2.5 GB of 5.0 GB  1.2 GB/s",
        "checking model_last.pt  100%  5.0 GB of 5.0 GB  2.5 GB/s",
    ]


def test_progress_bar_redraws_in_place_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(validate_cli.time, "monotonic", clock)
    out = _Tty()
    bar = ProgressBar("checking x.pt", out)
    clock.now += 1.5
    bar(1_000, 4_000)
    bar.close()
    text = out.getvalue()
    assert text.startswith("\r[#####...............] checking x.pt   25%")
    assert text.endswith("\r\x1b[K")
    assert "\n" not in text


def test_preflight_validate_subcommand(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from entrypoint.cli import main

    assert main(["validate", "--json", str(folder / "model_1200.pt")]) == 0
    assert json.loads(capsys.readouterr().out)[0]["update"] == 1200
    assert main(["validate", str(folder / "model_last.pt")]) == 1


SPY_ON_THREADS = """
import sys
from entrypoint.checkpoints import validate_cli
verdicts = []
real_validate_file = validate_cli.validate_file
def validate_file(*args, **kwargs):
    verdicts.append(real_validate_file(*args, **kwargs))
    return verdicts[-1]
validate_cli.validate_file = validate_file
code = validate_cli.run_validate(sys.argv[1:], deep=True, as_json=False, load=False, expect=None)
print(code, verdicts[0].details["crc_threads"], verdicts[0].details["crc_checked"] > 0)
"""


@pytest.mark.parametrize("cpus", [1, 2])
def test_deep_validate_hashes_on_the_cpus_the_process_may_use(folder: Path, cpus: int) -> None:
    """The CPU affinity is a real limit the probe reads: `validate --deep` gets that many threads."""
    import os
    import subprocess
    import sys

    available = sorted(os.sched_getaffinity(0))
    if len(available) < cpus:
        pytest.skip(f"needs {cpus} CPUs, this machine lets the tests use {len(available)}")
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", SPY_ON_THREADS, str(folder / "model_1200.pt")],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.sched_setaffinity(0, available[:cpus]),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-3:] == ["0", str(cpus), "True"]
