"""`python -m node ...`."""

import sys

from node.cli import main

# The guard matters: worker processes (spawn) import this module as __mp_main__.
if __name__ == "__main__":
    sys.exit(main())
