"""`python -m ir_lightning ...` is `ir-lightning ...`."""

import sys

from ir_lightning.entry import main

sys.argv[0] = "python -m ir_lightning"  # the program name --help shows (not __main__.py)
raise SystemExit(main())
