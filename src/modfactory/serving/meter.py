"""What the serving endpoints answered, counted in this process (each ``serve`` replica
exports its own; Prometheus sums them): requests by endpoint and status, texts and flags
per label (their ratio is the flag rate), request latency, the champion each name serves."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ServeMeter:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modfactory_serve_requests",
            "Serving requests answered, by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.texts = Counter(
            "modfactory_serve_texts",
            "Texts scored, by model name.",
            ["model_name"],
            registry=self.registry,
        )
        self.flagged = Counter(
            "modfactory_serve_flagged",
            "Texts flagged, by model name and label (over modfactory_serve_texts_total: the "
            "flag rate).",
            ["model_name", "label"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modfactory_serve_request_seconds",
            "Time to answer a serving request, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch = Histogram(
            "modfactory_serve_batch_texts",
            "Texts per scoring call (concurrent requests' texts are scored together).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.champion = Gauge(
            "modfactory_serve_champion",
            "1 for the champion each model name is served by.",
            ["model_name", "run_id", "model_id"],
            registry=self.registry,
        )
        self._serving: dict[str, tuple[str, str]] = {}

    def serving(self, model_name: str, run_id: str, model_id: str) -> None:
        """The champion now answering for ``model_name`` (the previous one's series goes)."""
        before = self._serving.get(model_name)
        if before == (run_id, model_id):
            return
        if before is not None:
            self.champion.remove(model_name, *before)
        self.champion.labels(model_name, run_id, model_id).set(1)
        self._serving[model_name] = (run_id, model_id)

    def scored(self, model_name: str, flags: list[dict[str, bool]]) -> None:
        self.texts.labels(model_name).inc(len(flags))
        for label in flags[0] if flags else ():
            self.flagged.labels(model_name, label).inc(sum(f[label] for f in flags))

    def exposition(self) -> bytes:
        """The counters in Prometheus' text format."""
        return generate_latest(self.registry)
