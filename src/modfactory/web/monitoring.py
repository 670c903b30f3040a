"""What ``/metrics`` and ``/healthz`` report, read from Redis at request time.

Runs by state and stage durations come from the two small indexes the run store keeps in
the same transactions as the runs; queue depth from arq's queue; backend API errors from a
counter the backends bump on every failed request (retried or not); scheduled-retrain
decisions from the schedule log; shadow agreement from the shadow log; the drift of each
champion's served scores from the drift log. Nothing here is
process-local, so any number of ``modfactory serve`` replicas report the same numbers
(the serving counters each process adds after these are its own).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from redis.asyncio import Redis

from modfactory.backends.api_errors import api_errors_key
from modfactory.evaluation.drift import Drift, champion_drifts
from modfactory.store.health import worker_heartbeat
from modfactory.store.run import STAGE_BUCKETS, RunState
from modfactory.store.runs import RunStore
from modfactory.store.shadow import ShadowLog, ShadowTally
from modfactory.triggers.schedule import ScheduleLog


@dataclass
class _Readings:
    """What one scrape read from Redis."""

    states: dict[str, int]
    histogram: dict[tuple[str, str], dict[str, float]]
    ready: int
    deferred: int
    errors: dict[tuple[str, ...], int]
    decisions: dict[str, int]
    worker_up: bool
    shadows: list[ShadowTally]
    drifts: list[Drift]


async def _read(redis: Redis, queue_name: str, window: float, alert_at: float) -> _Readings:
    store = RunStore(redis, queue_name)
    await store.reindex()
    histogram: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for field, value in (await redis.hgetall(store.stage_histogram_key)).items():
        stage, backend, what = field.decode().split("|")
        histogram[(stage, backend)][what] = float(value)
    queued = await redis.zcard(queue_name)
    ready = await redis.zcount(queue_name, "-inf", int(time.time() * 1000))
    errors = {
        tuple(k.decode().split("|", 1)): int(v)
        for k, v in (await redis.hgetall(api_errors_key(queue_name))).items()
    }
    return _Readings(
        states=await store.state_counts(),
        histogram=histogram,
        ready=ready,
        deferred=queued - ready,
        errors=errors,
        decisions=await ScheduleLog(redis, queue_name).counts(),
        worker_up=bool(await worker_heartbeat(redis, queue_name)),
        shadows=await ShadowLog(redis, queue_name).tallies(),
        drifts=await champion_drifts(redis, queue_name, window, alert_at),
    )


def _families(read: _Readings) -> Iterator[Metric]:
    runs = GaugeMetricFamily("modfactory_runs", "Runs by state.", labels=["state"])
    for state in RunState:
        runs.add_metric([state.value], read.states.get(state.value, 0))
    yield runs
    stages = HistogramMetricFamily(
        "modfactory_stage_duration_seconds",
        "How long succeeded stages took.",
        labels=["stage", "backend"],
    )
    for (stage, backend), counts in sorted(read.histogram.items()):
        buckets = [
            (str(b) if b != float("inf") else "+Inf", counts.get(f"{b:g}", 0.0))
            for b in STAGE_BUCKETS
        ]
        stages.add_metric([stage, backend], buckets, counts.get("sum", 0.0))
    yield stages
    queue = GaugeMetricFamily("modfactory_queue_jobs", "Jobs in the arq queue.", labels=["when"])
    queue.add_metric(["ready"], read.ready)
    queue.add_metric(["deferred"], read.deferred)
    yield queue
    api = CounterMetricFamily(
        "modfactory_backend_api_errors",
        "Failed backend API requests, retried or not.",
        labels=["backend", "kind"],
    )
    for (backend, kind), count in sorted(read.errors.items()):
        api.add_metric([backend, kind], count)
    yield api
    ticks = CounterMetricFamily(
        "modfactory_scheduled_retrains", "Cron ticks by decision.", labels=["action"]
    )
    for action in ("started", "skipped"):
        ticks.add_metric([action], read.decisions.get(action, 0))
    yield ticks
    yield GaugeMetricFamily(
        "modfactory_worker_up", "1 if a worker heartbeat is recent.", value=int(read.worker_up)
    )
    yield from _shadow_families(read.shadows)
    yield from _drift_families(read.drifts)


def _shadow_families(shadows: list[ShadowTally]) -> Iterator[Metric]:
    pair = ["model_name", "champion", "candidate"]
    texts = CounterMetricFamily(
        "modfactory_shadow_texts", "Texts scored by both a champion and its shadow.", labels=pair
    )
    agreement = GaugeMetricFamily(
        "modfactory_shadow_agreement",
        "Share of shadowed texts the candidate flags as the champion does, per label.",
        labels=[*pair, "label"],
    )
    for tally in shadows:
        key = [tally.model_name, tally.champion, tally.candidate]
        texts.add_metric(key, tally.texts)
        for label, share in sorted(tally.agreement().items()):
            agreement.add_metric([*key, label], share)
    yield texts
    yield agreement


def _drift_families(drifts: list[Drift]) -> Iterator[Metric]:
    psi = GaugeMetricFamily(
        "modfactory_drift_psi",
        "PSI of a champion's served scores, latest window vs the first after promotion.",
        labels=["model_name", "run_id", "label"],
    )
    rate = GaugeMetricFamily(
        "modfactory_drift_flag_rate",
        "Share of served texts flagged, in the first window after promotion and the latest.",
        labels=["model_name", "run_id", "label", "window"],
    )
    alert = GaugeMetricFamily(
        "modfactory_drift_alert",
        "1 when a label's PSI is at or above MODFACTORY_DRIFT_ALERT.",
        labels=["model_name", "run_id"],
    )
    for drift in drifts:
        key = [drift.model_name, drift.run_id]
        for label, d in drift.labels.items():
            psi.add_metric([*key, label], d.psi)
            rate.add_metric([*key, label, "first"], d.flag_rate_first)
            rate.add_metric([*key, label, "latest"], d.flag_rate_latest)
        alert.add_metric(key, int(drift.alert))
    yield psi
    yield rate
    yield alert


async def prometheus_text(
    redis: Redis, queue_name: str, drift_window: float = 3600, drift_alert: float = 0.2
) -> bytes:
    """The Prometheus text exposition of everything above."""
    read = await _read(redis, queue_name, drift_window, drift_alert)

    class Snapshot:
        def collect(self) -> Iterator[Metric]:
            return _families(read)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot())
    return generate_latest(registry)
