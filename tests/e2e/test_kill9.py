"""kill -9 at seeded random moments while model_last.pt is being saved after every update.

Our trainer: every restart finds a valid model_last.pt and resumes at or after the last completed save.
The same loop against stock F5-TTS saving (a plain torch.save onto model_last.pt) counts the kills that
left a corrupt model_last.pt; both figures are printed.

Speed: importing F5-TTS takes seconds, so a small fork server (this file run as a script) imports it once
and forks one training process per run; the test kills each run's whole process group (trainer and data
loader worker, as a container kill would) and starts the next. The runs themselves are real: the real
driver (or stock Trainer) loads the checkpoint from disk, trains on real data and saves.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

KILLS = 30
SEED = 20240611
# A save must take a noticeable time (model + EMA + AdamW state is ~16 bytes per parameter) while an update
# stays cheap: a small transformer with a large text embedding (a 48k-symbol vocabulary x 256) gives a
# ~200 MB checkpoint whose training step costs little more than the tiny preset's.
MODEL_CONFIG = {"dim": 64, "depth": 2, "heads": 2, "ff_mult": 2, "text_dim": 256, "conv_layers": 1}
EXTRA_SYMBOLS = 48_000
SAVED_LAST = re.compile(r"Saved last checkpoint at update (\d+)")
RESUMED = re.compile(r"Resuming from \S+ at update (\d+)|Starting from scratch|^STOCK START (\d+)")


# --- the fork server (runs in its own process) ------------------------------------------------------------
def _serve() -> None:
    import torch
    from f5_tts.model import Trainer

    from entrypoint import presets
    from entrypoint.handoff import read_handoff
    from entrypoint.train import driver
    from entrypoint.train.data import load_train_dataset

    presets.PRESETS["tiny"] = presets.Preset("tiny", "DiT", dict(MODEL_CONFIG), 0.0)

    def run_stock() -> int:
        handoff = read_handoff()
        options = handoff.training

        torch.set_num_threads(1)
        model = driver.build_model(handoff)
        trainer = Trainer(
            model,
            epochs=10_000,
            learning_rate=options.learning_rate,
            num_warmup_updates=options.warmup_updates,
            save_per_updates=10**9,
            checkpoint_path=str(handoff.output_dir),
            batch_size_per_gpu=options.batch_size,
            batch_size_type="sample",
            logger=None,
            last_per_updates=1,
        )
        dataset = load_train_dataset(handoff.dataset_dir, dict(presets.MEL_SPEC_KWARGS))
        print("STOCK START 0", flush=True)
        trainer.train(dataset, num_workers=1, resumable_with_seed=options.seed)
        return 0

    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setpgid(0, 0)
                fd = os.open(job["fifo"], os.O_WRONLY)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
                os.environ.clear()
                os.environ.update(job["env"])
                code = driver.main() if job["mode"] == "safe" else run_stock()
            except BaseException as error:  # report, never return into the server loop
                print(f"run failed: {error!r}", flush=True)
            finally:
                sys.stdout.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status}), flush=True)


# --- the test -------------------------------------------------------------------------------------------
def checkpoint_problem(path: Path) -> str:
    """'' when path is a complete, loadable F5-TTS training checkpoint; else what is wrong."""
    import torch

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # every CRC: catches a torn write, not only a short one
        if bad is not None:
            return f"CRC mismatch in {bad}"
        checkpoint = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        return "" if isinstance(checkpoint.get("update"), int) else "no update"
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"


class ForkServer:
    def __init__(self, folder: Path) -> None:
        from tests.trainer_data import REPO_ROOT

        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        self.folder = folder
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        self.runs = 0

    def run(self, mode: str, env: dict[str, str]) -> tuple[int, Iterator[str]]:
        """Start one run; returns its pid and an iterator over its output lines."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.runs += 1
        fifo = self.folder / f"run-{self.runs}.fifo"
        os.mkfifo(fifo)
        self.process.stdin.write(json.dumps({"mode": mode, "env": env, "fifo": str(fifo)}) + "\n")
        self.process.stdin.flush()
        pid = json.loads(self.process.stdout.readline())["pid"]
        reader = open(fifo, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by the generator
        fifo.unlink()

        def lines() -> Iterator[str]:
            with reader:
                yield from reader

        return pid, lines()

    def reap(self) -> int:
        assert self.process.stdout is not None
        return json.loads(self.process.stdout.readline())["status"]

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def _run_env(values: dict[str, str], checkpoint: Path | None) -> dict[str, str]:
    # The fork server starts the trainer in-process (30 restarts without 30 interpreter starts), so it is
    # handed the document `preflight run` would write; the preflight's own choices are tested elsewhere.
    from tests.trainer_data import write_handoff_for

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFLIGHT_")}
    env.update(values)
    env.update(write_handoff_for(values, checkpoint, Path(values["OUTPUT_DIR"]) / "preflight"))
    return env


def _kill_loop(server: ForkServer, mode: str, values: dict[str, str], rng: random.Random) -> dict[str, Any]:
    output = Path(values["OUTPUT_DIR"])
    last = output / "model_last.pt"
    figures: dict[str, Any] = {"kills": 0, "corrupt": 0, "mid_save": 0, "went_back": 0, "resumed": []}
    last_completed = 0
    for _ in range(KILLS):
        checkpoint = None
        if last.exists():
            problem = checkpoint_problem(last)
            if problem:
                figures["corrupt"] += 1
                # Set the broken file aside (as the preflight's quarantine would) so the next run can start.
                last.rename(output / f"model_last.pt.corrupted-{figures['corrupt']}")
            else:
                checkpoint = last
        pid, lines = server.run(mode, _run_env(values, checkpoint if mode == "safe" else None))
        seen = []
        for line in lines:
            seen.append(line)
            resumed = RESUMED.search(line)
            if resumed and resumed.group(1) is not None:
                update = int(resumed.group(1))
                figures["resumed"].append(update)
                if update < last_completed:
                    figures["went_back"] += 1
            saved = SAVED_LAST.search(line)
            if saved:
                last_completed = max(last_completed, int(saved.group(1)))
                break
        else:
            raise AssertionError(f"{mode} run ended before its first save:\n{''.join(seen)[-3000:]}")
        # The first save finished; the kill lands at a seeded moment among the next few update/save cycles.
        time.sleep(rng.uniform(0.0, 0.8))
        os.killpg(pid, signal.SIGKILL)
        for line in lines:
            saved = SAVED_LAST.search(line)
            if saved:
                last_completed = max(last_completed, int(saved.group(1)))
        status = server.reap()
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"run ended with {status}"
        figures["kills"] += 1
        temps = list(output.glob(".model_last.pt.partial-*"))
        if temps:
            figures["mid_save"] += 1
            for temp in temps:  # unfinished temp files of ours; the preflight removes them the same way
                temp.unlink()
        elif mode == "stock" and last.exists() and checkpoint_problem(last):
            figures["mid_save"] += 1
    if last.exists() and checkpoint_problem(last):
        figures["corrupt"] += 1
    figures["last_completed"] = last_completed
    return figures


@pytest.mark.slow
@pytest.mark.trainer
def test_kill9_during_saves_never_leaves_a_corrupt_model_last(tmp_path: Path, tmp_path_factory: Any) -> None:
    pytest.importorskip("f5_tts")
    from tests.trainer_data import make_tiny_dataset, tiny_settings

    dataset = make_tiny_dataset(tmp_path_factory.getbasetemp() / "tiny-dataset")
    vocab = tmp_path / "vocab.txt"
    symbols = (dataset / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab.write_text(
        "\n".join(symbols + [f"extra{i}" for i in range(EXTRA_SYMBOLS)]) + "\n", encoding="utf-8"
    )
    server = ForkServer(tmp_path)
    rng = random.Random(SEED)
    try:
        results = {}
        for mode in ("safe", "stock"):
            root = tmp_path / mode
            values = tiny_settings(dataset, root, last_every_updates=1, max_updates=0, epochs=10_000)
            values["VOCAB_FILE"] = str(vocab)
            results[mode] = _kill_loop(server, mode, values, rng)
    finally:
        server.close()
    safe, stock = results["safe"], results["stock"]
    print(
        f"\nkill -9 x{safe['kills']} (our trainer): {safe['corrupt']} corrupt model_last.pt, "
        f"{safe['mid_save']} kills inside a save, {safe['went_back']} resumes before the last completed save"
        f"\nkill -9 x{stock['kills']} (stock F5-TTS save): {stock['corrupt']} corrupt model_last.pt"
    )
    assert safe["kills"] >= KILLS and stock["kills"] >= KILLS
    assert safe["corrupt"] == 0
    assert safe["went_back"] == 0
    assert len(safe["resumed"]) == KILLS - 1  # every restart after the first resumed from model_last.pt
    assert safe["mid_save"] > 0, "no kill landed inside a save: the test did not test anything"


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
