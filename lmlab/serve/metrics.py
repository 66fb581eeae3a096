"""Prometheus metrics of one server (a registry per app, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Latencies of a small model on a CPU run from milliseconds to tens of seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "lmlab_requests", "Requests answered, by endpoint and HTTP status.",
            ["endpoint", "status"], registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter("lmlab_prompt_tokens", "Prompt tokens prefilled.", registry=r)
        self.completion_tokens = Counter(
            "lmlab_completion_tokens", "Tokens generated (all choices).", registry=r
        )
        self.queue_depth = Gauge(
            "lmlab_queue_depth", "Requests waiting to join the running batch.", registry=r
        )
        self.running_rows = Gauge(
            "lmlab_running_rows", "Rows (samples) in the running batch.", registry=r
        )
        self.ttft = Histogram(
            "lmlab_time_to_first_token_seconds", "From arrival to the first generated token.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.per_token = Histogram(
            "lmlab_time_per_output_token_seconds",
            "Mean time between generated tokens of a finished choice (after the first).",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.cancelled = Counter(
            "lmlab_cancelled_requests", "Requests dropped: client gone or timed out.",
            ["reason"], registry=r,
        )  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)
