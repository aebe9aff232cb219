"""Notification email: the three kinds reach exactly the admin-role users, once each, whatever SMTP does."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ResponseError

from _smtp_sink import SmtpSink, wait_until

from gateway.config import PaymentsConfig, SmtpConfig
from gateway.funding import RechargeWorker, TestProvider, start_funding_tasks
from gateway.ledger.client import RateTerms
from gateway.ledger.keys import OrgKeys
from gateway.notify import OutboxMailer

UNIT = 1_000_000
TERMS = RateTerms(connection_fee=0, rate_per_min=100_000, initial_increment_s=60, subsequent_increment_s=60)
ADMINS = ("alice@example.com", "bob@example.com")


def smtp_config(port: int, **kw) -> SmtpConfig:
    args = {"host": "127.0.0.1", "port": port, "sender": "billing@creditgate.test", "timeout_s": 2.0,
            "poll_interval_s": 0.02, "retry_backoff_s": 0.05, "max_backoff_s": 0.2, "claim_idle_s": 30.0}
    args.update(kw)
    return SmtpConfig(**args)


async def setup_org(svc, name: str = "Acme Widgets"):
    org, _ = await svc.directory.create_org(name, country="GB", currency="GBP")
    d = svc.directory
    await d.add_user(org, "alice", number="+442079460001", email="alice@example.com", roles=["billing_admin"])
    await d.add_user(org, "bob", number="+442079460002", email="bob@example.com",
                     roles=["communications_support_specialist", "device_admin"])
    await d.add_user(org, "carol", number="+442079460003", email="carol@example.com", licence=True)  # no role
    await d.add_user(org, "dave", number="+442079460004", roles=["company_admin"])  # no address
    return org


async def debit(svc, org, call_id: str) -> None:
    g = await svc.ledger.reserve(org.id, call_id, pays="credits", terms=TERMS, chunk_s=60, lease_ms=60_000,
                                 month="202611")
    assert g.ok, g
    s = await svc.ledger.settle(org.id, call_id, 1, month="202611", answered=True, duration_ms=60_000,
                                end_reason="normal")
    assert s.ok, s


async def recharge(svc, outcome: str) -> None:
    """Run one worker round trip with a scripted provider until the purchase has an outcome."""
    w = RechargeWorker(client=svc.client, ledger=svc.ledger, directory=svc.directory,
                       provider=TestProvider(outcome), config=PaymentsConfig(poll_interval_s=0.02))
    await w.consumer.poll()
    await w.consumer.idle()


def body(msg) -> str:
    return msg.get_content().replace("\r\n", "\n")


async def test_three_kinds_of_email_reach_exactly_the_admins(make_services, smtp_sink) -> None:
    svc = await make_services()
    org = await setup_org(svc)
    await svc.ledger.fund(org.id, UNIT)
    await svc.directory.set_recharge(org, threshold=UNIT, amount=50 * UNIT)
    await debit(svc, org, "c1")  # 1.00 -> 0.90: crosses the threshold
    await recharge(svc, "succeed")  # +50.00 -> 50.90
    await svc.directory.set_recharge(org, threshold=50_850_000, amount=75 * UNIT)
    await debit(svc, org, "c2")  # 50.90 -> 50.80: crosses 50.85
    await recharge(svc, "decline")
    await svc.directory.recharge_off(org)
    # Spend the rest to exactly zero: 508 calls of 0.10.
    await asyncio.gather(*(debit(svc, org, f"z{i}") for i in range(508)))
    assert (await svc.ledger.balance(org.id)).balance == 0

    mailer = OutboxMailer(svc.client, svc.directory, smtp_config(smtp_sink.port))
    await mailer.consumer.poll()
    await mailer.consumer.idle()

    assert sorted(r for rcpts, _ in smtp_sink.messages for r in rcpts) == sorted(ADMINS * 3)
    assert all(len(rcpts) == 1 for rcpts, _ in smtp_sink.messages)  # one message per recipient
    for addr in ADMINS:
        ok, failed, zero = smtp_sink.to(addr)
        assert ok["Subject"] == "Acme Widgets: communications credits recharged with 50.00 GBP"
        assert ok["From"] == "billing@creditgate.test" and ok["To"] == addr
        assert "Amount: 50.00 GBP\n" in body(ok) and "Balance: 50.90 GBP\n" in body(ok)
        assert failed["Subject"] == "Acme Widgets: auto-recharge of 75.00 GBP failed"
        assert "Reason: card expired\n" in body(failed) and "Balance: 50.80 GBP\n" in body(failed)
        assert zero["Subject"] == "Acme Widgets: communications credits balance reached zero"
        assert "Balance: 0.00 GBP\n" in body(zero)
        for msg in (ok, failed, zero):
            assert "Time: 20" in body(msg) and "Z\n" in body(msg)  # ISO 8601 UTC
    assert smtp_sink.to("carol@example.com") == []

    # Nothing is mailed twice: every entry is acknowledged.
    await mailer.consumer.poll()
    await mailer.consumer.idle()
    assert len(smtp_sink.messages) == 6
    assert (await svc.client.xpending(OrgKeys(org.id).outbox, "mailer"))["pending"] == 0


async def test_a_redelivered_entry_skips_recipients_already_mailed(make_services, smtp_sink) -> None:
    svc = await make_services()
    org = await setup_org(svc)
    await svc.ledger.fund(org.id, 100_000)
    await debit(svc, org, "c1")  # 0.10 -> 0: balance_zero
    k = OrgKeys(org.id)
    (entry_id, fields), = await svc.ledger.stream(k.outbox)
    # A sender that mailed alice and died before bob: its marker survives in Redis.
    await svc.client.sadd(k.outbox_sent(entry_id), "alice@example.com")
    mailer = OutboxMailer(svc.client, svc.directory, smtp_config(smtp_sink.port))
    assert await mailer.handle(org.id, entry_id, fields) is True
    assert [rcpts for rcpts, _ in smtp_sink.messages] == [["bob@example.com"]]
    # Handled once more (a redelivery after a crash before XACK): nobody gets it again.
    assert await mailer.handle(org.id, entry_id, fields) is True
    assert len(smtp_sink.messages) == 1
    assert 0 < await svc.client.ttl(k.outbox_sent(entry_id))


async def test_two_senders_mail_each_entry_once(make_services, smtp_sink) -> None:
    svc = await make_services()
    orgs = [await setup_org(svc, f"Org {i}") for i in range(3)]
    for org in orgs:
        await svc.ledger.fund(org.id, 100_000)
        await debit(svc, org, "c1")
    mailers = [OutboxMailer(svc.client, svc.directory, smtp_config(smtp_sink.port), consumer=f"m{i}")
               for i in range(2)]
    tasks = [asyncio.ensure_future(m.run()) for m in mailers]
    try:
        await wait_until(lambda: len(smtp_sink.messages) >= 6, what="every admin of every org was mailed")
        for m in mailers:
            await m.consumer.idle()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    ids = [m["X-Creditgate-Notification"] + " " + rcpts[0] for rcpts, m in smtp_sink.messages]
    assert len(ids) == len(set(ids)) == 6


async def test_smtp_down_delays_no_funding_and_mail_goes_out_when_it_returns(make_services) -> None:
    sink = SmtpSink()  # a port with nothing listening yet: the SMTP server is down
    svc = await make_services(payments={"provider": "test", "poll_interval_s": 0.02},
                              smtp={"host": "127.0.0.1", "port": sink.port, "timeout_s": 1.0,
                                    "poll_interval_s": 0.02, "retry_backoff_s": 0.05, "max_backoff_s": 0.2})
    org = await setup_org(svc)
    await svc.ledger.fund(org.id, UNIT)
    await svc.directory.set_recharge(org, threshold=UNIT, amount=50 * UNIT)
    tasks = start_funding_tasks(svc)
    assert [t.get_name() for t in tasks] == ["creditgate-recharge", "creditgate-mailer"]
    try:
        await debit(svc, org, "c1")
        await wait_until(lambda: _balance_is(svc, org, 50 * UNIT + 900_000), what="the recharge was funded")
        k = OrgKeys(org.id)
        # The notice waits, unacknowledged, while the sender backs off.
        await wait_until(lambda: _pending(svc, k.outbox, 1), what="the mailer tried the entry")
        assert sink.messages == []
        sink.start()
        try:
            await wait_until(lambda: len(sink.messages) == 2, what="the mail went out once SMTP was back")
            await wait_until(lambda: _pending(svc, k.outbox, 0), what="the entry was acknowledged")
            assert sorted(r[0] for r, _ in sink.messages) == list(ADMINS)
            assert all("recharged with 50.00 GBP" in m["Subject"] for _, m in sink.messages)
        finally:
            sink.stop()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _balance_is(svc, org, amount: int) -> bool:
    return (await svc.ledger.balance(org.id)).balance == amount


async def _pending(svc, stream: str, n: int) -> bool:
    try:
        return (await svc.client.xpending(stream, "mailer"))["pending"] == n
    except ResponseError:  # the group does not exist yet
        return False


async def test_without_an_smtp_host_only_the_recharge_worker_runs(make_services) -> None:
    svc = await make_services()
    tasks = start_funding_tasks(svc)
    try:
        assert [t.get_name() for t in tasks] == ["creditgate-recharge"]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.cluster
async def test_recharge_and_mail_on_a_redis_cluster(cluster_url, tmp_path, smtp_sink) -> None:
    from gateway.config import Config
    from gateway.services import open_services

    cfg = Config.from_dict({"data_dir": str(tmp_path / "data"), "redis": {"url": cluster_url, "cluster": True,
                                                                         "timeout_s": 5.0},
                            "payments": {"provider": "test", "poll_interval_s": 0.02},
                            "smtp": {"host": "127.0.0.1", "port": smtp_sink.port, "poll_interval_s": 0.02}})
    async with open_services(cfg) as svc:
        orgs = [await setup_org(svc, f"Org {i}") for i in range(3)]  # spread over the cluster's slots
        for org in orgs:
            await svc.ledger.fund(org.id, UNIT)
            await svc.directory.set_recharge(org, threshold=UNIT, amount=50 * UNIT)
        tasks = start_funding_tasks(svc)
        try:
            for org in orgs:
                await debit(svc, org, "c1")
            await wait_until(lambda: len(smtp_sink.messages) == 6, what="every org recharged and mailed")
            for org in orgs:
                assert (await svc.ledger.balance(org.id)).balance == 50 * UNIT + 900_000
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
