"""``python -m innv_pattern``: the ``innv-pattern`` command (see :mod:`innv_pattern.cli`)."""

import sys

from innv_pattern.cli import main

if __name__ == "__main__":
    sys.exit(main())
