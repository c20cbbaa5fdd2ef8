"""Regenerate .env.example and the table of variables in docs/settings.md from entrypoint/settings.py
(`make docs`; tests fail when they drift)."""

from __future__ import annotations

from pathlib import Path

from entrypoint.settings_docs import env_example, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    (ROOT / ".env.example").write_text(env_example(), encoding="utf-8")
    readme_path = ROOT / "docs" / "settings.md"
    readme = readme_path.read_text(encoding="utf-8")
    start = readme.index("| Variable | Default |")
    end = readme.find("\n\n", start)
    end = len(readme.rstrip("\n")) if end < 0 else end
    text = readme[:start] + markdown_table().rstrip("\n") + readme[end:]
    readme_path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
