"""`preflight dataset scan`: decode every clip of the prepared dataset once and report sample rates,
channels, clipped, silent and unreadable files (opt-in: it reads all the audio)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from entrypoint.errors import EXIT_CHECK_FAILED, EXIT_OK, CheckFailed, ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "dataset",
        help="dataset tools: `dataset scan` decodes every clip once",
        epilog="example: preflight dataset scan --env-file .env --json",
    )
    actions = parser.add_subparsers(dest="dataset_action", metavar="ACTION", required=True)
    scan = actions.add_parser(
        "scan",
        help="decode every clip: sample rates, channels, clipping, silence",
        epilog="example: preflight dataset scan --env-file .env --json",
    )
    scan.add_argument("--env-file", help="settings file (default: $ENV_FILE, else ./.env)")
    scan.add_argument("--dataset", help="prepared dataset folder (default: DATASET_DIR)")
    scan.add_argument("--json", action="store_true", help="print the findings as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    from entrypoint.readiness.audio_scan import progress_bar, scan_audio, scan_results
    from entrypoint.readiness.dataset_facts import DatasetUnreadable, probe_dataset
    from entrypoint.settings import load_settings

    folder = (
        Path(args.dataset) if args.dataset else load_settings(cli_env_file=args.env_file).settings.dataset_dir
    )
    try:
        facts = probe_dataset(folder)
    except DatasetUnreadable as error:
        raise ConfigError(
            f"the dataset cannot be read: {error}", "give --dataset or set DATASET_DIR"
        ) from None
    if facts.audio_paths is None:
        raise CheckFailed(f"the audio paths cannot be read: {facts.text_skipped or 'no audio_path column'}")
    try:
        import soundfile  # noqa: F401
    except ImportError:
        raise CheckFailed(
            "dataset scan needs soundfile, which is not installed here", "run it in the image"
        ) from None
    results, data = scan_results(scan_audio([str(p) for p in facts.audio_paths.to_pylist()], progress_bar))
    if args.json:
        print(json.dumps({"checks": [r.to_json() for r in results], "scan": data}, indent=2))
    else:
        for result in results:
            print(f"  {result.status.upper():<4}  {result.message}")
            if result.fix and result.status != "ok":
                print(f"        fix: {result.fix}")
    return EXIT_CHECK_FAILED if data["unreadable"] else EXIT_OK
