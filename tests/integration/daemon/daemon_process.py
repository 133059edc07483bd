"""`topn daemon` as a child process for the crash and drain tests, with the stand-in node script.

`python -m tests.integration.daemon.daemon_process INBOX`: settings from config/local.toml and the
TOPN_* environment (as the CLI loads them), JSON events on stdout, exit status as `topn daemon`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from orchestrator.events import configure_events
from orchestrator.service.daemon import serve
from orchestrator.settings import load_settings
from tests.integration.orchestrator.test_pipeline_run import stand_in_node

ROOT = Path(__file__).resolve().parents[3]


def main() -> int:
    configure_events("json", sys.stdout, "info")
    settings = load_settings(ROOT / "config" / "local.toml", os.environ)
    return serve(settings, Path(sys.argv[1]), "127.0.0.1:0", node_script=stand_in_node())


if __name__ == "__main__":
    sys.exit(main())
