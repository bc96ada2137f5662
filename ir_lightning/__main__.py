"""`python -m ir_lightning ...` is `ir-lightning ...`."""

from ir_lightning.cli import main

raise SystemExit(main())
