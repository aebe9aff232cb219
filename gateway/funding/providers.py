"""Payment providers behind one small interface: buy an amount for an organization, idempotently.

A provider answers one question, ``await provider.purchase(PurchaseRequest(...))``: did the
purchase succeed or was it declined? It raises ``PaymentUnavailable`` when it cannot tell (no
answer in time, a 5xx after every retry, a malformed answer): the caller may ask again later
with the same idempotency key, and the provider must then answer for the first purchase instead
of charging again. ``PaymentError`` (a 4xx: the request itself is wrong) is final.

HTTP contract (``HttpProvider``, ``[payments] provider = "http"``, ``[payments] url``)::

    POST {url}/purchases
    Content-Type: application/json
    Idempotency-Key: <idempotency_key>
    {"idempotency_key": "recharge:acme:1700000000000-0",   # unique per purchase, stable on retry
     "org": "acme",
     "amount": "50.00",                                    # decimal string, account currency
     "currency": "GBP",
     "reason": "auto-recharge"}                            # or "funding" (one-time purchase)

    200 {"status": "succeeded", "id": "pay_123", "reason": ""}
    200 {"status": "declined",  "id": "pay_124", "reason": "card expired"}

The provider must treat a second request with an idempotency key it has seen as a replay and
answer with the first result. Each attempt waits at most ``[payments] timeout_s``; a timeout or a
5xx is retried up to ``[payments] retries`` times with exponential backoff (``backoff_s``,
doubling), always with the same idempotency key; a connection refused, a 4xx or any other status
is not retried here. ``TestProvider`` (``provider = "test"``) answers as ``[payments]
test_outcome`` says: ``succeed``, ``decline`` (reason "card expired") or ``timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from rating_core.money import format_money

from gateway.config import PaymentsConfig
from gateway.errors import ConfigError, CreditgateError

log = logging.getLogger("creditgate.funding.providers")

__all__ = [
    "PaymentError",
    "PaymentUnavailable",
    "PurchaseRequest",
    "PurchaseOutcome",
    "PaymentProvider",
    "HttpProvider",
    "TestProvider",
    "make_provider",
]

SUCCEEDED = "succeeded"
DECLINED = "declined"


class PaymentError(CreditgateError):
    """The payment provider refused the request itself (not a decline): a final failure."""

    status_hint = 502


class PaymentUnavailable(PaymentError):
    """The payment provider gave no usable answer; asking again with the same key is safe."""

    status_hint = 503


@dataclass(frozen=True, slots=True, kw_only=True)
class PurchaseRequest:
    idempotency_key: str
    org: str
    amount: int  # micro-units
    currency: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PurchaseOutcome:
    """What the provider said about one purchase: ``status`` is 'succeeded' or 'declined'."""

    status: str
    id: str
    reason: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED


class PaymentProvider(Protocol):
    async def purchase(self, request: PurchaseRequest) -> PurchaseOutcome: ...

    async def close(self) -> None: ...


class HttpProvider:
    """JSON over HTTP (the contract in this module's docstring), with bounded retries."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, retries: int = 3, backoff_s: float = 0.5) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError("[payments] url must be an http:// or https:// URL")
        self.url = url.rstrip("/") + "/purchases"
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self._session: aiohttp.ClientSession | None = None

    async def purchase(self, request: PurchaseRequest) -> PurchaseOutcome:
        body = {"idempotency_key": request.idempotency_key, "org": request.org,
                "amount": format_money(request.amount), "currency": request.currency, "reason": request.reason}
        headers = {"Idempotency-Key": request.idempotency_key}
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                async with self._session.post(self.url, json=body, headers=headers) as resp:
                    if resp.status >= 500:
                        problem = f"payment provider answered {resp.status}"
                        log.warning("%s for %s (attempt %d)", problem, request.idempotency_key, attempt + 1)
                        continue
                    text = await resp.text()
                    if resp.status != 200:
                        raise PaymentError(f"payment provider refused the request: {resp.status} {text[:200]}")
                    return _outcome(text)
            except asyncio.TimeoutError:
                problem = "payment provider timed out"
                log.warning("%s for %s (attempt %d)", problem, request.idempotency_key, attempt + 1)
            except aiohttp.ClientError as exc:
                # Not retried here (only timeouts and 5xx are): the caller decides when to ask again.
                raise PaymentUnavailable(f"payment provider unreachable: {exc}") from None
        raise PaymentUnavailable(problem)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _outcome(text: str) -> PurchaseOutcome:
    try:
        data = json.loads(text)
        status, pid, reason = data["status"], str(data.get("id") or ""), str(data.get("reason") or "")
    except (ValueError, KeyError, TypeError):
        # Whether the money moved is unknown: retryable with the same key, never a decline.
        raise PaymentUnavailable(f"payment provider sent a malformed answer: {text[:200]!r}") from None
    if status not in (SUCCEEDED, DECLINED):
        raise PaymentUnavailable(f"payment provider sent an unknown status {status!r}")
    if status == DECLINED and not reason:
        reason = "declined by the payment provider"
    return PurchaseOutcome(status=status, id=pid, reason=reason)


class TestProvider:
    """A provider scripted by ``[payments] test_outcome``; replays answer like the first purchase."""

    __test__ = False  # not a pytest test class

    def __init__(self, outcome: str = "succeed") -> None:
        if outcome not in ("succeed", "decline", "timeout"):
            raise ConfigError("[payments] test_outcome must be succeed, decline or timeout")
        self.outcome = outcome
        self.requests: list[PurchaseRequest] = []
        self._answers: dict[str, PurchaseOutcome] = {}

    async def purchase(self, request: PurchaseRequest) -> PurchaseOutcome:
        self.requests.append(request)
        first = self._answers.get(request.idempotency_key)
        if first is not None:
            return first
        if self.outcome == "timeout":
            raise PaymentUnavailable("payment provider timed out")
        if self.outcome == "decline":
            answer = PurchaseOutcome(status=DECLINED, id=f"test-{len(self._answers) + 1}", reason="card expired")
        else:
            answer = PurchaseOutcome(status=SUCCEEDED, id=f"test-{len(self._answers) + 1}")
        self._answers[request.idempotency_key] = answer
        return answer

    async def close(self) -> None:
        return None


def make_provider(config: PaymentsConfig) -> Any:
    """The provider ``[payments] provider`` names; None for ``manual`` (no purchases)."""
    if config.provider == "http":
        return HttpProvider(config.url, timeout_s=config.timeout_s, retries=config.retries,
                            backoff_s=config.backoff_s)
    if config.provider == "test":
        return TestProvider(config.test_outcome)
    return None
