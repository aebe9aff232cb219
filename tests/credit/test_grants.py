"""Dial-out grant tokens: signed, bound to their claim, expiring; anything else is refused (403)."""

from __future__ import annotations

import pytest

from gateway.credit.errors import CreditRefused
from gateway.credit.grants import GrantClaim, sign, verify

SECRET = b"s" * 32
CLAIM = GrantClaim(org="acme", call_id="g0123", number="+97142345678", user="alice", conference_id="c1",
                   expires=2_000_000_000)


def test_a_signed_grant_verifies_to_its_claim() -> None:
    assert verify(SECRET, sign(SECRET, CLAIM), now=1_900_000_000) == CLAIM


@pytest.mark.parametrize("mutate", [
    lambda t: t.replace("cg1.", "cg2."),
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # the MAC
    lambda t: t.split(".")[0] + "." + t.split(".")[1][:-3] + "xyz." + t.split(".")[2],  # the payload
    lambda t: t + ".extra",
    lambda t: "",
    lambda t: "cg1.!!!.???",
])
def test_tampered_grants_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CreditRefused) as exc:
        verify(SECRET, mutate(sign(SECRET, CLAIM)), now=1_900_000_000)
    assert exc.value.refusal.status == 403


def test_another_secret_or_an_expired_grant_is_refused() -> None:
    with pytest.raises(CreditRefused):
        verify(b"t" * 32, sign(SECRET, CLAIM), now=1_900_000_000)
    with pytest.raises(CreditRefused) as exc:
        verify(SECRET, sign(SECRET, CLAIM), now=2_000_000_001)
    assert "expired" in exc.value.refusal.reason
