"""``python -m vicreg_lib pretrain|evaluate ...``: see cli.py."""

from vicreg_lib.cli import main

raise SystemExit(main())
