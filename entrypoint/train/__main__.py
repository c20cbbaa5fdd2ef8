"""`python -m entrypoint.train`: the crash-safe F5-TTS trainer (started by `preflight run`)."""

from entrypoint.train.driver import main

raise SystemExit(main())
