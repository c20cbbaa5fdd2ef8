"""The table of variables (docs/settings.md) and the text of .env.example, both made from the settings themselves
(tests compare them with the files, so the documentation cannot drift from the code)."""

from __future__ import annotations

from entrypoint.settings import SPECS

GROUP_TITLES = {
    "paths": "Locations (host paths; compose.yaml mounts them into the container)",
    "cpu": "CPUs and DataLoader workers",
    "checks": "Checks before training",
    "checkpoints": "Checkpoints: where to look, how hard to check",
    "model": "Model and vocabulary",
    "trainer": "Training",
    "guards": "Guards: stalls, crash loops, NaN losses",
    "cluster": "Several machines (docs/proxmox.md)",
    "compose": "Compose (docker compose reads these from .env)",
}


def markdown_table() -> str:
    lines = ["| Variable | Default | Allowed | Meaning |", "|---|---|---|---|"]
    for group in GROUP_TITLES:
        for spec in SPECS:
            if spec.group == group:
                default = f"`{spec.default}`" if spec.default else "(empty)"
                lines.append(f"| `{spec.name}` | {default} | {spec.allowed()} | {spec.help} |")
    return "\n".join(lines) + "\n"


def env_example() -> str:
    lines = [
        "# F5-TTS preflight settings. Copy to .env and edit; each variable below shows its default.",
        "# The process environment wins over this file (as in Compose). Secrets (WANDB_API_KEY, HF_TOKEN, ...)",
        "# may go here too: they never appear in a report or a log.",
        "",
    ]
    for group, title in GROUP_TITLES.items():
        lines.append(f"# --- {title} " + "-" * max(3, 100 - len(title)))
        for spec in SPECS:
            if spec.group == group:
                lines.append(f"# {spec.help} Allowed: {spec.allowed()}.")
                lines.append(f"{spec.name}={spec.default}")
        lines.append("")
    lines += [
        "# Docker Compose's own: the files `docker compose` uses without -f (no GPU: add compose.cpu.yaml).",
        "# COMPOSE_FILE=compose.yaml:compose.cpu.yaml",
        "",
        "# --- Secrets (optional) " + "-" * 83,
        "# WANDB_API_KEY=",
        "# HF_TOKEN=",
    ]
    return "\n".join(lines) + "\n"
