"""List an organization's live calls from the ledger's leases and call records."""

from __future__ import annotations

import json
from typing import Any

from rating_core.money import format_money

from gateway.directory import Org
from gateway.ledger.client import Ledger

__all__ = ["live_calls"]


async def live_calls(ledger: Ledger, org: Org) -> list[dict[str, Any]]:
    rows = []
    for call_id in await ledger.live_call_ids(org.id):
        rec = await ledger.call_record(org.id, call_id)
        if rec.get("st") not in ("held", "live"):
            continue
        meta = json.loads(rec.get("meta") or "{}")
        held = rec["held"] - rec["com"]
        rows.append({
            "call_id": call_id,
            "state": "billing" if rec.get("st") == "live" else "reserved",
            "user": meta.get("user", ""),
            "caller": meta.get("caller", ""),
            "callee": meta.get("callee", ""),
            "class": meta.get("class", ""),
            "destination": meta.get("destination", ""),
            "direction": meta.get("direction", ""),
            "conference_id": meta.get("conference_id", ""),
            "paid_by": rec["pays"],
            "granted_s": rec["g"],
            "held": format_money(held),
            "charged_so_far": format_money(rec["com"]),
            "currency": org.currency,
        })
    return sorted(rows, key=lambda r: r["call_id"])
