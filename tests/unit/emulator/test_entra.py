"""The emulator's bearer-token check: signature, expiry and the Batch audience."""

from __future__ import annotations

from emulator.entra import check_bearer, sign_token

KEY = b"k" * 32
NOW = 1_800_000_000.0


def token(**claims: object) -> str:
    return "Bearer " + sign_token({"aud": "https://batch.core.windows.net/", "exp": NOW + 60, **claims}, KEY)


def test_a_token_for_the_batch_resource_is_accepted() -> None:
    assert check_bearer(token(), KEY, NOW).ok
    assert check_bearer(token(aud="https://batch.core.windows.net"), KEY, NOW).ok


def test_a_token_for_another_audience_an_old_one_or_a_forged_one_is_refused() -> None:
    storage = check_bearer(token(aud="https://storage.azure.com"), KEY, NOW)
    assert not storage.ok and "audience" in storage.reason
    assert "expired" in check_bearer(token(exp=NOW - 1), KEY, NOW).reason
    assert "signature" in check_bearer(token(), b"another key", NOW).reason
    assert not check_bearer("SharedKey acct:sig", KEY, NOW).ok
    assert not check_bearer("Bearer not.a-token", KEY, NOW).ok
