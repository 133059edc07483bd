"""The recorded client signatures used by the unit tests are what the live client signers produce."""

from __future__ import annotations

import json

from tests.integration.emulator.clients.signers import VECTORS, sign_all


def test_recorded_signatures_match_the_live_signers() -> None:
    recorded = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert sign_all() == recorded, (
        "a client signer changed; rerun `python -m tests.integration.emulator.clients.signers`"
    )
