"""``python -m mmexplain`` runs the ``mmexplain`` command."""

import sys

from mmexplain.cli import main

sys.exit(main())
