"""``python -m fmc``: the same as the ``fmc`` command."""

import sys

from fmc.cli.main import main

sys.exit(main())
