"""`python -m app …` runs the `voicebridge` command line."""

from app.cli import main

raise SystemExit(main())
