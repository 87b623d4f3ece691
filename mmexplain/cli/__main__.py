"""``python -m mmexplain.cli``: the same as ``mmexplain``."""

import sys

from mmexplain.cli import main

sys.exit(main())
