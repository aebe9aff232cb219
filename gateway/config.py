"""Load the one TOML configuration file into typed settings, every one with a safe default.

``Config.load()`` with no file gives the embedded defaults, so ``creditgate run`` works on a
fresh machine. The file is named by ``--config`` or else by ``CREDITGATE_CONFIG``. Unknown keys
are refused (a typo must not silently fall back to a default on a billing system).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rating_core.errors import MoneyError
from rating_core.money import parse_money

from gateway.errors import ConfigError

__all__ = [
    "Config",
    "SipConfig",
    "HttpConfig",
    "RedisConfig",
    "CreditConfig",
    "SmtpConfig",
    "PaymentsConfig",
    "parse_hostport",
]

CONFIG_ENV = "CREDITGATE_CONFIG"


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int | None]:
    """Split ``host[:port]`` or ``[v6]:port``; the port is None when absent and no default given."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ConfigError(f"unterminated IPv6 address in {text!r}")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ConfigError(f"bad address {text!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        # Bare IPv4/hostname, or a bare IPv6 address without brackets (no port possible).
        host, port_text = text, ""
    if not host:
        raise ConfigError(f"missing host in {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"bad port in {text!r}")
    return host, int(port_text)


@dataclass(frozen=True, slots=True, kw_only=True)
class SipConfig:
    listen: str = "127.0.0.1:5060"
    max_message_bytes: int = 65535
    tcp_idle_timeout_s: float = 300.0
    max_live_calls: int = 100_000
    max_setups_per_s: int = 5_000
    drain_timeout_s: float = 30.0
    max_loop_lag_ms: int = 150  # new calls get 503 while the process runs this far behind
    # New calls get 503 when their INVITE waited this long in the UDP socket's receive queue: a
    # backlog the event loop's lateness does not show (0: off). Below T1 (500 ms), so what is
    # admitted is answered before its caller retransmits.
    max_queue_age_ms: int = 200
    overload_retry_after_s: int = 5  # the Retry-After of a 503 for load

    # Hostile traffic (issue 8). Digest: a nonce is fresh this long; a source address (IP) that fails
    # digest authentication digest_max_failures times within digest_failure_window_s gets 503 with
    # Retry-After until that window ends, whatever it sends (counted per process, in a bounded table).
    digest_nonce_ttl_s: int = 300
    digest_max_failures: int = 10
    digest_failure_window_s: float = 60.0
    # TCP: at most this many connections in all and from one source address; a message begun (or a
    # connection opened) must be complete within tcp_message_timeout_s (slow senders, slowloris).
    tcp_max_connections: int = 10_000
    tcp_max_connections_per_source: int = 256
    tcp_message_timeout_s: float = 10.0

    # The process's own full garbage collections (gateway.gcpolicy): none automatic (with thousands
    # of live calls one stops the process for seconds); one at least gc_full_interval_s after the
    # last when at most gc_full_max_live_calls calls are live, or regardless after 24 intervals.
    # gc_full_interval_s = 0: never.
    gc_full_interval_s: float = 3600.0
    gc_full_max_live_calls: int = 1000

    def __post_init__(self) -> None:
        if self.gc_full_interval_s < 0 or self.gc_full_max_live_calls < 0:
            raise ConfigError("[sip] gc_full_interval_s and gc_full_max_live_calls must not be negative")
        for name in ("max_live_calls", "max_setups_per_s", "max_loop_lag_ms", "max_queue_age_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"[sip] {name} must not be negative (0: no limit)")
        if self.overload_retry_after_s < 1:
            raise ConfigError("[sip] overload_retry_after_s must be at least 1")
        for name in ("digest_nonce_ttl_s", "digest_max_failures", "tcp_max_connections",
                     "tcp_max_connections_per_source"):
            if getattr(self, name) < 1:
                raise ConfigError(f"[sip] {name} must be at least 1")
        for name in ("digest_failure_window_s", "tcp_message_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[sip] {name} must be positive")

    @property
    def address(self) -> tuple[str, int]:
        host, port = parse_hostport(self.listen, 5060)
        assert port is not None
        return host, port


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    listen: str = "127.0.0.1:8080"
    max_body_bytes: int = 8 * 1024 * 1024
    max_json_bytes: int = 64 * 1024  # JSON request bodies (rate decks, CSV, have max_body_bytes)

    @property
    def address(self) -> tuple[str, int]:
        host, port = parse_hostport(self.listen, 8080)
        assert port is not None
        return host, port


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    url: str = ""
    cluster: bool = False
    appendfsync: str = "everysec"
    timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if self.appendfsync not in ("always", "everysec", "no"):
            raise ConfigError("[redis] appendfsync must be always, everysec or no")
        if self.timeout_s <= 0:
            raise ConfigError("[redis] timeout_s must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditConfig:
    debit_interval_s: int = 60
    on_ledger_outage: str = "fail_closed"
    outage_grace_s: int = 30
    fail_open_max_s: int = 300
    fail_open_max_amount: str = "10.00"
    lease_grace_s: int = 30
    warning_before_s: int = 0
    warning_webhook: str = ""
    min_funding: str = "50"
    max_concurrent_calls: int = 0
    daily_spend_limit: str = ""
    sweep_interval_s: float = 5.0
    grant_ttl_s: int = 60  # how long a dial-out grant may wait for its INVITE

    def __post_init__(self) -> None:
        if self.debit_interval_s <= 0:
            raise ConfigError("[credit] debit_interval_s must be positive")
        if self.on_ledger_outage not in ("fail_closed", "fail_open"):
            raise ConfigError("[credit] on_ledger_outage must be fail_closed or fail_open")
        for name in ("outage_grace_s", "fail_open_max_s", "lease_grace_s", "warning_before_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"[credit] {name} must not be negative")
        for name in ("fail_open_max_amount", "min_funding"):
            _money(f"[credit] {name}", getattr(self, name))
        if self.daily_spend_limit:
            _money("[credit] daily_spend_limit", self.daily_spend_limit)

    @property
    def fail_open_max_micros(self) -> int:
        return parse_money(self.fail_open_max_amount)

    @property
    def min_funding_micros(self) -> int:
        return parse_money(self.min_funding)


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpConfig:
    host: str = ""
    port: int = 25
    sender: str = "creditgate@localhost"
    username: str = ""
    password: str = ""
    starttls: bool = False
    timeout_s: float = 10.0
    # The outbox sender: how often it looks for new notifications, how it backs off while the
    # SMTP server is unreachable, and after how long another process takes over the entries of
    # a sender that died.
    poll_interval_s: float = 1.0
    retry_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    claim_idle_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError("[smtp] port must be 1 to 65535")
        for name in ("timeout_s", "poll_interval_s", "retry_backoff_s", "max_backoff_s", "claim_idle_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[smtp] {name} must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentsConfig:
    provider: str = "manual"
    url: str = ""
    test_outcome: str = "succeed"
    timeout_s: float = 10.0
    # HTTP provider: further attempts of one request after a timeout or a 5xx, the first after
    # backoff_s, each next one after twice as long (the same idempotency key every time).
    retries: int = 3
    backoff_s: float = 0.5
    # Auto-recharge worker: purchases whose provider stays unreachable are tried this many times
    # in all, recharge_backoff_s apart (doubling), then recorded as failed. A decline is final.
    recharge_attempts: int = 3
    recharge_backoff_s: float = 30.0
    poll_interval_s: float = 1.0
    claim_idle_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("timeout_s", "backoff_s", "recharge_backoff_s", "poll_interval_s", "claim_idle_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[payments] {name} must be positive")
        if self.retries < 0:
            raise ConfigError("[payments] retries must not be negative")
        if self.recharge_attempts < 1:
            raise ConfigError("[payments] recharge_attempts must be at least 1")
        if self.provider not in ("manual", "http", "test"):
            raise ConfigError("[payments] provider must be manual, http or test")
        if self.test_outcome not in ("succeed", "decline", "timeout"):
            raise ConfigError("[payments] test_outcome must be succeed, decline or timeout")
        if self.provider == "http" and not self.url:
            raise ConfigError("[payments] url is required with provider = http")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    data_dir: Path = Path("./.creditgate")
    log_level: str = "INFO"
    sip: SipConfig = field(default_factory=SipConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    credit: CreditConfig = field(default_factory=CreditConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    payments: PaymentsConfig = field(default_factory=PaymentsConfig)
    source: Path | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> "Config":
        """Read ``path`` (or ``$CREDITGATE_CONFIG``); no file at all means every default."""
        if path is None:
            path = os.environ.get(CONFIG_ENV) or None
        if path is None:
            return cls()
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {p} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {p}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: {exc}") from None
        return cls.from_dict(raw, source=p)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: Path | None = None) -> "Config":
        sections = {
            "sip": SipConfig,
            "http": HttpConfig,
            "redis": RedisConfig,
            "credit": CreditConfig,
            "smtp": SmtpConfig,
            "payments": PaymentsConfig,
        }
        kwargs: dict[str, Any] = {"source": source}
        for key, value in raw.items():
            if key in sections:
                if not isinstance(value, dict):
                    raise ConfigError(f"[{key}] must be a table")
                kwargs[key] = _build(sections[key], value, key)
            elif key == "data_dir":
                base = source.parent if source is not None else Path.cwd()
                kwargs["data_dir"] = (base / str(value)).resolve() if not Path(str(value)).is_absolute() else Path(str(value))
            elif key == "log_level":
                kwargs["log_level"] = str(value).upper()
            else:
                raise ConfigError(f"unknown configuration key {key!r}")
        return cls(**kwargs)

    def with_data_dir(self, data_dir: Path) -> "Config":
        return dataclasses.replace(self, data_dir=data_dir)


def _build(kind: type, values: dict[str, Any], section: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(kind)}
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in [{section}]")
        default = known[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"[{section}] {key} must be true or false")
        elif isinstance(default, int) and not isinstance(default, bool):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"[{section}] {key} must be an integer")
        elif isinstance(default, float):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"[{section}] {key} must be a number")
            value = float(value)
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise ConfigError(f"[{section}] {key} must be a string")
        clean[key] = value
    return kind(**clean)


def _money(name: str, text: str) -> int:
    try:
        return parse_money(text)
    except MoneyError as exc:
        raise ConfigError(f"{name}: {exc}") from None
