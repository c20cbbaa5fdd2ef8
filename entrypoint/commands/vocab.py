"""`preflight vocab extend`: a new vocabulary with the dataset's missing characters and a checkpoint whose
text embedding grew to match, both written next to the originals (which are never modified)."""

from __future__ import annotations

import argparse
from pathlib import Path

from entrypoint.errors import EXIT_OK, CheckFailed, ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "vocab",
        help="vocabulary tools: `vocab extend` adds missing characters",
        epilog="example: preflight vocab extend --env-file .env   (then set VOCAB_FILE and PRETRAINED_CHECKPOINT "
        "to the files it names)",
    )
    actions = parser.add_subparsers(dest="vocab_action", metavar="ACTION", required=True)
    extend = actions.add_parser(
        "extend",
        epilog="example: preflight vocab extend --env-file .env --out-dir data/pretrained",
        help="write a vocabulary with the dataset's missing characters and a checkpoint grown to match",
        description="Writes <vocab>_<size>.txt and <checkpoint>_vocab<size>.pt|.safetensors next to the "
        "originals (or into --out-dir), validates the new checkpoint, and never modifies the originals. "
        "Defaults come from the settings (PRETRAINED_CHECKPOINT, VOCAB_FILE, DATASET_DIR, MODEL_PRESET).",
    )
    extend.add_argument("--env-file", help="settings file (default: $ENV_FILE, else ./.env)")
    extend.add_argument("--checkpoint", help="pretrained checkpoint (default: PRETRAINED_CHECKPOINT)")
    extend.add_argument("--vocab", help="its vocabulary (default: VOCAB_FILE, else DATASET_DIR/vocab.txt)")
    extend.add_argument(
        "--dataset", help="prepared dataset whose missing characters to add (default: DATASET_DIR)"
    )
    extend.add_argument(
        "--symbols", nargs="+", metavar="SYMBOL", help="add these symbols instead of the dataset's"
    )
    extend.add_argument("--preset", help="model preset to validate against (default: MODEL_PRESET)")
    extend.add_argument("--out-dir", help="write the new files here instead of next to the originals")
    return parser


def run(args: argparse.Namespace) -> int:
    from entrypoint.presets import PRESETS
    from entrypoint.readiness.vocab_extend import extend_vocabulary
    from entrypoint.settings import load_settings

    settings = load_settings(cli_env_file=args.env_file).settings
    checkpoint = Path(args.checkpoint) if args.checkpoint else settings.pretrained_checkpoint
    if checkpoint is None:
        raise ConfigError("no checkpoint to extend", "give --checkpoint or set PRETRAINED_CHECKPOINT")
    vocab = Path(args.vocab) if args.vocab else (settings.vocab_file or settings.dataset_dir / "vocab.txt")
    preset = args.preset or settings.model_preset
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r} is not allowed: expected one of {', '.join(PRESETS)}")
    symbols = (
        list(args.symbols)
        if args.symbols
        else _missing_from_dataset(Path(args.dataset) if args.dataset else settings.dataset_dir, vocab)
    )
    try:
        result = extend_vocabulary(
            checkpoint, vocab, symbols, preset=preset, out_dir=Path(args.out_dir) if args.out_dir else None
        )
    except OSError as error:
        raise CheckFailed(
            f"could not write the new files: {error.strerror or error} ({getattr(error, 'filename', '') or ''})",
            "use --out-dir on a writable disk with room for one more checkpoint",
        ) from None
    from entrypoint.readiness.vocabulary import show_token

    print(f"added {len(result.added)} symbol(s): {' '.join(show_token(s) for s in result.added)}")
    print(f"vocabulary: {vocab} ({result.old_size}) -> {result.vocab} ({result.new_size} symbols)")
    print(f"checkpoint: {checkpoint} -> {result.checkpoint}")
    print(f"  grew: {', '.join(result.grown)}; new rows: seeded random normal, as F5-TTS's fine-tuning UI")
    if result.left_out:
        print(
            f"  left out: {', '.join(result.left_out)} (sized for the old vocabulary; training starts at update 0)"
        )
    print(f"  validated: deep check against {preset} with {result.new_size} symbols")
    print(f"next: set VOCAB_FILE={result.vocab} and PRETRAINED_CHECKPOINT={result.checkpoint}")
    return EXIT_OK


def _missing_from_dataset(dataset: Path, vocab: Path) -> list[str]:
    from entrypoint.readiness.dataset_facts import DatasetUnreadable, probe_dataset
    from entrypoint.readiness.vocabulary import missing_tokens
    from entrypoint.vocab import read_vocabulary

    try:
        facts = probe_dataset(dataset)
    except DatasetUnreadable as error:
        raise ConfigError(f"the dataset cannot be read: {error}", "give --dataset or --symbols") from None
    if facts.text is None:
        raise CheckFailed(f"the dataset's text cannot be read: {facts.text_skipped}", "give --symbols")
    try:
        vocab_map = read_vocabulary(vocab)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"vocabulary {vocab} cannot be read: {getattr(error, 'strerror', None) or error}"
        ) from None
    missing = missing_tokens(facts, vocab_map)
    if not missing:
        raise ConfigError(f"nothing to add: {vocab} has every character of {dataset}")
    return sorted(missing)
