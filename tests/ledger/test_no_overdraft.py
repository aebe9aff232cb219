"""No overdraft: 1,000 concurrent call sessions from two processes on one small balance.

Whatever the interleaving, the balance never goes below zero (at any audit entry), the audit
stream sums to the balance, CDR charges equal the debits, every reserved call has exactly one CDR,
and ``creditgate reconcile`` agrees (and disagrees once the books are tampered with).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.directory import Directory
from gateway.ledger.client import Ledger
from gateway.ledger.keys import OrgKeys
from gateway.ledger.reconcile import reconcile

WORKER = Path(__file__).with_name("_overdraft_worker.py")
ROOT = Path(__file__).resolve().parents[2]
FUNDS = 50_000_000  # 50.00: far less than 1,000 calls of up to 400 s at 0.10/min would cost


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(params=["single", "cluster"])
def ledger_target(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """This suite's own targets: its worker processes pipeline on a single server already, so the
    package's third ('pipelined') target would only run the 'single' case again."""
    if request.param == "cluster":
        return request.getfixturevalue("cluster_url"), True
    return request.getfixturevalue("redis_url"), False


async def test_no_overdraft_from_two_processes(ledger: Ledger, ledger_client: Any, ledger_target: tuple[str, bool],
                                               tmp_path: Path) -> None:
    url, cluster = ledger_target
    org, _ = await Directory(ledger_client).create_org("acme", country="GB", currency="GBP")
    await ledger.fund(org.id, FUNDS)

    procs = [
        subprocess.Popen([sys.executable, str(WORKER), url, "1" if cluster else "0", org.id, f"p{i}", "500", str(i)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    stats = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        stats.append(json.loads(out))

    reserved = sum(s["reserved"] for s in stats)
    assert reserved + sum(s["refused"] for s in stats) == 1000
    assert sum(s["refused"] for s in stats) > 0, "the balance should have run out"
    assert min(s["min_balance"] for s in stats) >= 0

    bal = await ledger.balance(org.id)
    assert bal.balance >= 0 and bal.reserved == 0 and bal.live == 0
    charged = sum(s["charged"] for s in stats)
    assert FUNDS - bal.balance == charged

    rep = await reconcile(ledger, org.id)
    assert rep.ok, rep.problems
    assert rep.cdrs == reserved
    assert rep.cdr_charges == charged
    audit = await ledger.audit_entries(org.id)
    assert all(int(e["balance"]) >= 0 for _, e in audit)

    config = tmp_path / "creditgate.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[redis]\nurl = "{url}"\ncluster = {"true" if cluster else "false"}\n')
    ok = _cli(config, "reconcile", org.id, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True

    # A single micro-unit slipped into the audit behind the ledger's back is caught.
    await ledger_client.xadd(OrgKeys(org.id).audit, {"type": "fund", "amount": "1", "balance": str(bal.balance + 1),
                                                     "call": "", "seq": "0", "ts": "", "note": "forged"})
    bad = _cli(config, "reconcile", org.id)
    assert bad.returncode == 1
    assert "DIFFERENCE" in bad.stdout
