"""``python -m purger.cli``: the ``purger`` command."""

import sys

from purger.cli import main

sys.exit(main())
