"""Credit-control sessions for softswitches that keep their own signalling (the RFC 4006 model over HTTP).

A switch asks to start a session (initial request: authorize and grant the first chunk), reports as the
call goes on (update: commit what was used, grant the next chunk or a final grant with the seconds
left) and ends it (terminate: charge the exact price and write the CDR). The policy, the ledger scripts
and the CDRs are the SIP calls' own. State lives in the ledger's call record, not in this process, so
any gateway process can serve any request of a session; every request is idempotent on the client's
sequence number (1, 2, ... for updates, the next one for terminate), which the scripts enforce: a
replay gets the first answer and changes nothing, a gap is refused.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from rating_core import UNLIMITED_SECONDS
from rating_core.money import format_money

from gateway.credit.errors import CreditRefused
from gateway.directory import Org
from gateway.errors import InvalidInput, NotFound
from gateway.ledger.client import Grant

if TYPE_CHECKING:
    from gateway.services import Services

__all__ = ["start_session", "update_session", "terminate_session", "SESSION_ID_RE"]

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9._~-]{8,100}$")
# A session not updated for this long past its grant is presumed lost and settled by the sweeper.
UPDATE_GRACE_S = 30


def _grant_view(session_id: str, grant: Grant, *, currency: str) -> dict[str, Any]:
    unlimited = grant.granted_s >= UNLIMITED_SECONDS
    return {"session_id": session_id, "granted_s": None if unlimited else grant.granted_s,
            "final": bool(grant.final), "held": format_money(grant.held), "currency": currency,
            "sequence": grant.seq}


async def start_session(svc: "Services", org: Org, *, session_id: str, number: str, user_id: str | None,
                        conference_id: str = "", direction: str = "outbound") -> dict[str, Any]:
    """Authorize and hold the first chunk; a refusal is a result (``authorized`` false), not an error."""
    if not SESSION_ID_RE.match(session_id):
        raise InvalidInput("8 to 100 of letters, digits and ._~-", "session_id")
    if direction not in ("outbound", "dialout"):
        raise InvalidInput("must be outbound or dialout", "direction")
    user = await svc.directory.get_user(org.id, user_id) if user_id else None
    try:
        auth = await svc.engine.authorize(
            org, call_id=session_id, dialed=number, user=user, direction=direction,  # type: ignore[arg-type]
            conference_id=conference_id,
            lease_ms=(svc.config.credit.debit_interval_s + UPDATE_GRACE_S + svc.config.credit.lease_grace_s) * 1000)
    except CreditRefused as exc:
        r = exc.refusal
        return {"authorized": False, "session_id": session_id, "reason": r.reason, "code": r.code,
                "status": r.status}
    rate = auth.rate
    return {"authorized": True, **_grant_view(session_id, auth.grant, currency=org.currency),
            "max_duration_s": None if auth.max_duration_s >= UNLIMITED_SECONDS else auth.max_duration_s,
            "paid_by": auth.paid_by, "class": auth.destination.number_class.value,
            "number": auth.destination.number,
            "rate": format_money(rate.rate_per_min) if rate is not None and auth.paid_by == "credits" else None}


async def _month(svc: "Services", org: Org, session_id: str) -> str:
    rec = await svc.ledger.call_record(org.id, session_id)
    if not rec or rec.get("st") == "refused":
        raise NotFound(f"no session {session_id!r}")
    month = await svc.ledger.call_month(org.id, session_id)
    if month is None:
        raise NotFound(f"no session {session_id!r}")
    return month


async def update_session(svc: "Services", org: Org, session_id: str, *, sequence: int) -> dict[str, Any]:
    """Commit the chunk used and grant the next (or a final grant); idempotent on ``sequence``."""
    month = await _month(svc, org, session_id)
    lease_ms = (2 * svc.config.credit.debit_interval_s + UPDATE_GRACE_S + svc.config.credit.lease_grace_s) * 1000
    grant = await svc.ledger.extend(org.id, session_id, sequence, month=month, lease_ms=lease_ms,
                                    daily_limit=org.daily_spend_limit)
    if not grant.ok:
        if grant.reason == "bad_seq":
            raise InvalidInput(f"expected sequence {grant.seq + 1}", "sequence")
        if grant.reason == "settled":
            raise InvalidInput("the session is terminated", "session_id")
        raise NotFound(f"no session {session_id!r}")
    return _grant_view(session_id, grant, currency=org.currency)


async def terminate_session(svc: "Services", org: Org, session_id: str, *, sequence: int, used_s: int,
                            answered: bool = True, reason: str = "normal") -> dict[str, Any]:
    """Charge the exact price of ``used_s`` (capped at what was granted) and write the CDR, once."""
    if used_s < 0 or used_s > 10**8:
        raise InvalidInput("must be 0 to 100000000", "used_s")
    if not re.fullmatch(r"[a-z_]{1,32}", reason):
        raise InvalidInput("lower-case letters and _ only", "reason")
    month = await _month(svc, org, session_id)
    res = await svc.ledger.settle(org.id, session_id, sequence, month=month, answered=answered,
                                  duration_ms=used_s * 1000, end_reason=reason, extra={"source": "session_api"})
    return {"session_id": session_id, "charge": format_money(res.charge), "billed_s": res.billed_s,
            "balance": format_money(res.balance), "currency": org.currency}
