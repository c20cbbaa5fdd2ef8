"""Regenerate .env.example and the README's table of variables from entrypoint/settings.py
(`make docs`; tests fail when they drift)."""

from __future__ import annotations

from pathlib import Path

from entrypoint.settings_docs import env_example, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    (ROOT / ".env.example").write_text(env_example(), encoding="utf-8")
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    start = readme.index("| Variable | Default |")
    end = readme.index("\n\n", start)
    readme_path.write_text(readme[:start] + markdown_table().rstrip("\n") + readme[end:], encoding="utf-8")


if __name__ == "__main__":
    main()
