"""Prometheus metrics, read at scrape time from the counters the SIP stack, B2BUA and ledger keep.

Nothing is counted twice on the call path: the B2BUA and the stack bump plain dict counters and the
ledger sums its script latencies; this collector turns them into metric families when scraped.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics"]


class _Collector:
    def __init__(self, svc: Any, b2bua: Any) -> None:
        self.svc = svc
        self.b2bua = b2bua

    def collect(self) -> Iterator[Metric]:
        ledger = self.svc.ledger
        req = CounterMetricFamily("creditgate_ledger_requests", "Ledger script calls", labels=["outcome"])
        req.add_metric(["ok"], ledger.requests - ledger.errors)
        req.add_metric(["error"], ledger.errors)
        yield req
        lat = CounterMetricFamily("creditgate_ledger_latency_seconds", "Total time spent in ledger script calls")
        lat.add_metric([], ledger.seconds)
        yield lat
        if self.b2bua is None:
            return
        live = GaugeMetricFamily("creditgate_calls_live", "Calls in progress in this process")
        live.add_metric([], self.b2bua.live_calls)
        yield live
        lag = GaugeMetricFamily("creditgate_event_loop_lag_seconds", "How late the event loop runs (decaying)")
        lag.add_metric([], self.b2bua.load.lag_s)
        yield lag
        policy = self.b2bua.gc_policy
        if policy is not None:
            gcs = CounterMetricFamily("creditgate_gc_collections", "Garbage collections run", labels=["generation"])
            pause = CounterMetricFamily("creditgate_gc_pause_seconds", "Time the process stood still in garbage "
                                        "collections", labels=["generation"])
            longest = GaugeMetricFamily("creditgate_gc_longest_pause_seconds", "Longest single garbage collection",
                                        labels=["generation"])
            for gen in range(3):
                gcs.add_metric([str(gen)], policy.collections[gen])
                pause.add_metric([str(gen)], policy.pause_s[gen])
                longest.add_metric([str(gen)], policy.max_pause_s[gen])
            yield gcs
            yield pause
            yield longest
        tcp = self.b2bua.stack.tcp
        conns = GaugeMetricFamily("creditgate_sip_tcp_connections", "SIP TCP connections open")
        conns.add_metric([], tcp.connections)
        yield conns
        closed = CounterMetricFamily("creditgate_sip_tcp_closed", "SIP TCP connections closed by the bounds: "
                                     "refused (too many in all or from one address) or reaped (idle, or a "
                                     "message not completed in time)", labels=["why"])
        closed.add_metric(["refused"], tcp.refused)
        closed.add_metric(["reaped"], tcp.reaped)
        yield closed
        sip_in = CounterMetricFamily("creditgate_sip_requests_received", "SIP requests received", labels=["method"])
        sip_resp = CounterMetricFamily("creditgate_sip_responses_received", "SIP responses received",
                                       labels=["status"])
        refused = CounterMetricFamily("creditgate_sip_refused", "Requests answered with an error or dropped",
                                      labels=["stage", "status"])
        for key, n in self.b2bua.stack.counters.items():
            if key.startswith("in_"):
                sip_in.add_metric([key[3:]], n)
            elif key.startswith("resp_"):
                sip_resp.add_metric([key[5:]], n)
            elif key.startswith("refused_"):
                refused.add_metric(["parse", key[8:]], n)
            elif key == "dropped":
                refused.add_metric(["parse", "dropped"], n)
        answered = CounterMetricFamily("creditgate_calls_answered", "Calls answered", labels=["paid_by", "class"])
        ended = CounterMetricFamily("creditgate_calls_ended", "Calls ended (settled)", labels=["reason"])
        refusals = CounterMetricFamily("creditgate_authorizations_refused", "Calls the credit engine refused",
                                       labels=["reason"])
        other = CounterMetricFamily("creditgate_b2bua_events", "Other B2BUA events", labels=["event"])
        debited = CounterMetricFamily("creditgate_debited_micros", "Money charged for calls this process settled "
                                      "(micro-units of the organizations' currencies)")
        debited.add_metric([], self.b2bua.counters.get("debited_micros", 0))
        yield debited
        for key, n in self.b2bua.counters.items():
            if key == "debited_micros":
                continue
            if key.startswith("refused_"):
                refused.add_metric(["call", key[8:]], n)
            elif key.startswith("refusal_"):
                refusals.add_metric([key[8:]], n)
            elif key.startswith("ended_"):
                ended.add_metric([key[6:]], n)
            elif key.startswith("answered_"):
                paid, _, cls = key[9:].partition("_")
                answered.add_metric([paid, cls], n)
            else:
                other.add_metric([key], n)
        yield from (sip_in, sip_resp, refused, refusals, answered, ended, other)


class Metrics:
    def __init__(self, svc: Any, b2bua: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(svc, b2bua))  # type: ignore[arg-type]

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
