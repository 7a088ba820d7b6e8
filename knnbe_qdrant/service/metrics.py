"""Prometheus metrics of the service, on a registry of its own (several apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("knnbe_http_requests_total", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("knnbe_http_request_seconds", "Request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("knnbe_http_errors_total", "Error responses by endpoint and kind",
                              ["endpoint", "kind"], registry=self.registry)
        self.batch_requests = Histogram("knnbe_map_batch_requests", "Map requests encoded together in one batch",
                                        buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_sentences = Histogram("knnbe_map_batch_sentences", "Sentences encoded together in one batch",
                                         buckets=BATCH_BUCKETS, registry=self.registry)
        self.request_sentences = Histogram("knnbe_map_request_sentences", "Sentences per map request",
                                           buckets=BATCH_BUCKETS, registry=self.registry)
        # Read at each scrape (0.02 ms): an alert on it tells the operator to run `knnbe-qdrant index`.
        self.unindexed = Gauge("knnbe_store_unindexed_points", "Points no vector index covers yet, which every query "
                               "scans (embedded store; NaN on a server, which indexes by itself, or before ready)",
                               registry=self.registry)

    def on_batch(self, requests: int, sentences: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_sentences.observe(sentences)
