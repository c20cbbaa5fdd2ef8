"""TRAIN_PROCESSES against the GPUs the container sees, and what the trainer mode can do without one."""

from __future__ import annotations

from entrypoint.checks.gpu import check_processes
from entrypoint.checks.result import FAIL, OK


def test_more_processes_than_visible_gpus_is_refused_with_the_number_to_use() -> None:
    result = check_processes(3, 2, "safe")
    assert result is not None and result.status == FAIL
    assert "TRAIN_PROCESSES=3 but 2 GPU(s) are visible" in result.message
    assert "TRAIN_PROCESSES to 2 or fewer" in result.fix


def test_one_process_per_gpu_or_one_alone_says_nothing() -> None:
    assert check_processes(2, 2, "safe") is None
    assert check_processes(1, 4, "stock") is None
    assert check_processes(1, 0, "stock") is None


def test_several_processes_without_a_gpu_only_in_safe_mode() -> None:
    safe = check_processes(2, 0, "safe")
    assert safe is not None and safe.status == OK and "Gloo" in safe.message
    stock = check_processes(2, 0, "stock")
    assert stock is not None and stock.status == FAIL
    assert "TRAINER_MODE=safe" in stock.fix
