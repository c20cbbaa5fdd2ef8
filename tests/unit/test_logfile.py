"""The in-process tee (the preflight's and the built-in trainer's own output) on a real log file."""

from __future__ import annotations

import io
from pathlib import Path

from entrypoint.logfile import Tee, open_log
from entrypoint.redact import Redactor

PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n-----END PRIVATE KEY-----"


def test_a_secret_written_in_pieces_and_over_lines_is_masked_in_terminal_and_log(tmp_path: Path) -> None:
    terminal = io.StringIO()
    log = open_log(tmp_path)
    tee = Tee(terminal, log, Redactor([PEM]))  # type: ignore[arg-type]
    tee.write("key: ")
    for piece in (PEM[:10], PEM[10:40], PEM[40:], "\n"):
        tee.write(piece)
    tee.write("progress 1\rprogress 2\nlast words -----BEG")
    tee.finish()
    log.close()
    logged = (tmp_path / "training.log").read_text()
    assert terminal.getvalue() == "key: ***\nprogress 1\rprogress 2\nlast words -----BEG"
    assert logged == "key: ***\nprogress 2\nlast words -----BEG\n"
    for line in PEM.splitlines():
        assert line not in logged and line not in terminal.getvalue()
