"""``python -m fedsim``: the command line (:func:`fedsim.cli.main`)."""

from fedsim.cli import main

raise SystemExit(main())
