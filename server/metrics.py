"""Prometheus families. Labels: `steered` (true/false) and `preset` (a registered preset name, `none` when
unsteered, else `custom`). Never a vector id or a strength as a label. vLLM's own `vllm:*` families live in the
same default registry and are exported on the same endpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)
LABELS = ("steered", "preset")


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def hist(name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = LABELS) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        def counter(name: str, doc: str, labels: tuple[str, ...] = LABELS) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        arm = ("preset", "arm")
        self.e2e = hist("steerserve:e2e_request_latency_seconds", "End-to-end request latency.", LATENCY_BUCKETS)
        self.ttft = hist("steerserve:time_to_first_token_seconds", "Time to the first token.", LATENCY_BUCKETS)
        self.itl = hist("steerserve:inter_token_latency_seconds", "Time between output tokens.", TOKEN_LATENCY_BUCKETS)
        self.prompt_tokens = counter("steerserve:prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens = counter("steerserve:generation_tokens", "Tokens generated.")
        self.requests = counter("steerserve:requests", "Finished requests by outcome.", (*LABELS, "status"))
        self.not_steered = counter(
            "steerserve:requests_not_steered",
            "Steered requests a worker could not steer (slot or vector mismatch): failed with an error.",
            (),
        )
        self.running = Gauge(
            "steerserve:num_requests_running", "Generation requests in flight in this API process.", registry=registry
        )
        self.waiting = Gauge(
            "steerserve:num_requests_waiting", "Requests waiting for a steering slot.", registry=registry
        )
        self.responses = counter("steerserve:responses", "Finished responses (choices), by preset and arm.", arm)
        self.responses_with_reflection = counter(
            "steerserve:responses_with_reflection", "Responses with at least one reflection keyword.", arm
        )
        self.reflection_markers = counter(
            "steerserve:reflection_markers",
            "Reflection keywords in responses, inside (reasoning) and outside (content) the thinking section.",
            (*arm, "section"),
        )
        self.reasoning_tokens = counter("steerserve:reasoning_tokens", "Tokens inside thinking sections.", arm)
        self.completion_tokens_per_response = hist(
            "steerserve:completion_tokens_per_response",
            "Completion tokens of one response (choice).",
            (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
            arm,
        )
        self._registry = registry
        self._stats: Callable[[], Any] | None = None
        registry.register(_RegistryCacheCollector(self))

    def track_registry(self, stats: Callable[[], Any]) -> None:
        """The registry cache's running totals (`hits`, `misses`, `stale`, `errors`), read at every scrape."""
        self._stats = stats

    def track_waiting(self, waiting: Callable[[], float]) -> None:
        self.waiting.set_function(waiting)


class _RegistryCacheCollector(Collector):
    FAMILIES = (
        ("steerserve:vector_cache_hits", "Registry cache hits.", "hits"),
        ("steerserve:vector_cache_misses", "Registry cache misses.", "misses"),
        ("steerserve:vector_cache_stale_served", "Cached entries served while the store failed.", "stale"),
        ("steerserve:registry_errors", "Registry (store) errors.", "errors"),
    )

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        stats = self.metrics._stats() if self.metrics._stats is not None else None
        for name, doc, attribute in self.FAMILIES:
            yield CounterMetricFamily(name, doc, value=float(getattr(stats, attribute, 0)) if stats else 0.0)

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(name, doc) for name, doc, _ in self.FAMILIES]
