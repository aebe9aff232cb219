"""Source identification against a real redis-server (SPEC 9: a port matches only that port, no port any
port, the most specific wins, unknown sources are nobody), failure mapping and header passthrough."""

from __future__ import annotations

import pytest
import redis.asyncio

from gateway.b2bua import identify_source, map_failure, passthrough
from gateway.b2bua.routing import calling_number, dialed_digits, tollfree_for
from gateway.directory import Directory
from gateway.sip import parse_message


@pytest.fixture
async def directory(redis_client: redis.asyncio.Redis) -> Directory:
    d = Directory(redis_client)
    acme, _ = await d.create_org("Acme", country="GB", currency="GBP")
    beta, _ = await d.create_org("Beta", country="US", currency="USD")
    await d.add_trunk(acme, "127.0.0.1:5071")
    await d.add_trunk(beta, "127.0.0.2")
    await d.add_trunk(acme, "127.0.0.2:5099", kind="bridge")
    await d.add_carrier("pstn", "127.0.0.3:5080")
    await d.add_tollfree(acme, "+18005550100", target="sip:bridge@127.0.0.1:5090")
    return d


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 5071, ("trunk", "acme")),  # exact address and port
        ("127.0.0.1", 5072, None),  # another port of a port-bound trunk: nobody
        ("127.0.0.2", 40000, ("trunk", "beta")),  # a host-only trunk: any port
        ("127.0.0.2", 5099, ("trunk", "acme")),  # the exact entry beats the host-only one
        ("127.0.0.3", 5080, ("carrier", "pstn")),
        ("127.0.0.3", 5081, None),  # a carrier matches only its address and port
        ("127.0.0.9", 5060, None),
    ],
)
async def test_identify_source(directory: Directory, host: str, port: int, expected: tuple[str, str] | None) -> None:
    origin = await identify_source(directory, host, port)
    if expected is None:
        assert origin is None
    else:
        kind, who = expected
        assert origin is not None and origin.kind == kind
        assert (origin.trunk.org if kind == "trunk" else origin.carrier.name) == who  # type: ignore[union-attr]


async def test_tollfree_lookup_accepts_any_digit_form(directory: Directory) -> None:
    for dialed in ("+18005550100", "18005550100", "+1-800-555-0100"):
        tf = await tollfree_for(directory, dialed)
        assert tf is not None and tf.org == "acme"
    assert await tollfree_for(directory, "+18005550199") is None
    assert await tollfree_for(directory, None) is None


INVITE = (
    b"INVITE sip:%2B442079460000;phone-context=x@gw.example SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKabc\r\n"
    b"From: \"Alice\" <sip:+442079460123@pbx.example>;tag=1\r\n"
    b"To: <sip:+442079460000@gw.example>\r\n"
    b"Call-ID: x1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
    b"Contact: <sip:alice@127.0.0.1:5071>\r\n"
    b"P-Asserted-Identity: <tel:+442079460777>\r\n"
    b"Proxy-Authorization: Digest username=\"u\"\r\n"
    b"X-Creditgate-Grant: secret\r\n"
    b"Session-Expires: 1800\r\nX-Custom: kept\r\n"
    b"Content-Type: application/sdp\r\nContent-Length: 0\r\n\r\n"
)


def test_identity_and_dialed_number_come_from_the_right_headers() -> None:
    req = parse_message(INVITE)
    assert calling_number(req) == "+442079460777"  # P-Asserted-Identity before From
    assert dialed_digits(req) == "+442079460000"  # unescaped user part, user parameters cut
    req.headers.remove("P-Asserted-Identity")
    assert calling_number(req) == "+442079460123"


def test_passthrough_drops_hop_by_hop_credentials_and_our_own_headers() -> None:
    req = parse_message(INVITE)
    names = [n.lower() for n, _ in passthrough(req.headers, drop=frozenset({"content-type"}))]
    assert names == ["p-asserted-identity", "session-expires", "x-custom"]


@pytest.mark.parametrize(
    ("status", "mapped"),
    [(486, 486), (480, 480), (603, 603), (404, 404), (600, 600), (408, 502), (500, 502), (502, 502),
     (503, 503), (504, 502)],
)
def test_failures_are_mapped_for_the_caller(status: int, mapped: int) -> None:
    got, reason, warning = map_failure(status, "Far")
    assert got == mapped
    # Passed-through failures are the far end's own words; everything the gateway maps it explains.
    assert (warning is None) == (status != 408 and not 500 <= status < 600)


def test_load_meter_rises_with_sustained_lateness_not_with_one_pause() -> None:
    from gateway.b2bua.core import LoadMeter

    m = LoadMeter(weight=0.2)
    assert m.observe(0.0) == 0.0
    one_pause = m.observe(0.3)  # one 300 ms pause (a GC): barely moves the average
    assert one_pause == pytest.approx(0.06)
    for _ in range(3):
        m.observe(0.0)
    assert m.lag_s < 0.04
    for _ in range(10):  # a process that stays 300 ms behind: overloaded within a few ticks
        m.observe(0.3)
    assert m.lag_s > 0.25
