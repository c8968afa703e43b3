"""Verified tokens are remembered (services check a shopper's token on every request),
but never past their expiry, and only the exact token that was verified."""

from __future__ import annotations

import time

import pytest

from services.common import auth
from services.common.errors import Unauthorized


def test_a_remembered_token_still_expires(monkeypatch):
    token = auth.issue_token(7, ["shopper"], ttl_s=60)
    assert auth.verify_token(token).user_id == 7
    assert auth.verify_token(token).user_id == 7  # from memory
    later = time.time() + 61
    monkeypatch.setattr(auth.time, "time", lambda: later)
    monkeypatch.setattr("jwt.api_jwt.datetime", _FrozenDatetime(later))
    with pytest.raises(Unauthorized) as e:
        auth.verify_token(token)
    assert e.value.code == "token_expired"


def test_only_the_exact_verified_token_is_remembered():
    token = auth.issue_token(8, ["shopper"])
    auth.verify_token(token)
    head, body, sig = token.split(".")
    forged_sig = sig[:-2] + ("AA" if not sig.endswith("AA") else "BB")
    for forged in (f"{head}.{body}.{forged_sig}", f"{head}.{body[:-1]}.{sig}"):
        with pytest.raises(Unauthorized):
            auth.verify_token(forged)


class _FrozenDatetime:
    """PyJWT reads the time through datetime.now(tz=utc): the same moved clock."""

    def __init__(self, at: float) -> None:
        self.at = at

    def now(self, tz=None):
        from datetime import datetime

        return datetime.fromtimestamp(self.at, tz)

    def __getattr__(self, name):
        from datetime import datetime

        return getattr(datetime, name)
