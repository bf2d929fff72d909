"""`python -m vlbridge` runs the command-line interface (same as the `vlbridge` script)."""

from vlbridge.cli import main

raise SystemExit(main())
