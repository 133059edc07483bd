"""`python -m orchestrator` is the same as the `topn` command."""

import sys

from orchestrator.cli import main

sys.exit(main())
