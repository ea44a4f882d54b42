"""`python -m voicebridge …` runs the `voicebridge` command line."""

from voicebridge.cli import main

raise SystemExit(main())
