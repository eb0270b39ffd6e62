"""``python -m bgwatch``: the ``bgwatch`` command."""

import sys

from .cli import main

sys.exit(main())
