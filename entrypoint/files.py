"""Small file facts shared by discovery, planning and stock mode."""

from __future__ import annotations

import os
from pathlib import Path


def same_file(a: Path, b: Path) -> bool:
    """Both names lead to one file. A name that does not exist yet (a save the plan will place) is the same
    only as itself."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a == b
