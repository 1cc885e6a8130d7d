"""``python -m fastnll``: the same command as the ``fastnll`` console script."""

import sys

from .cli import main

sys.exit(main())
