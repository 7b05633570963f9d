"""`python -m vlsm <subcommand>`: the same as the `vlsm` command."""

from vlsm.cli import main

raise SystemExit(main())
