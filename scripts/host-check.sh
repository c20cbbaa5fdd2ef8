#!/usr/bin/env bash
# Is this machine (a VM with an NVIDIA GPU passed through) ready for `docker compose up train`?
# Checks the NVIDIA driver, the NVIDIA Container Toolkit, Docker's GPU access, the Compose version and the
# free disk for OUTPUT_DIR and BACKUP_DIR; one line each, with the fix. Extra arguments go to the checker
# (--env-file FILE, --image IMAGE). Exit code 1 when a check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
    python=.venv/bin/python
else
    python=python3
fi
if ! "$python" -c 'import dotenv, tenacity' 2>/dev/null; then
    echo "host-check needs python-dotenv and tenacity: run \`make setup\` first" >&2
    exit 2
fi
exec "$python" -m tools.host_check "$@"
