"""`python -m ir_lightning ...` is `ir-lightning ...`."""

from ir_lightning.entry import main

raise SystemExit(main())
