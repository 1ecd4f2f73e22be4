"""Prometheus metrics of one app instance.

Each app gets its own registry (no module-level global state), so several apps in one
process (tests) keep separate counts. With several uvicorn workers every worker
reports its own numbers; scrape them through the workers' load balancer or run one
worker per container, which is what a GPU deployment wants anyway.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class ServiceMetrics:
    """The service's counters, gauges and histograms, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "nowcast_http_requests",
            "HTTP requests answered, by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nowcast_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "nowcast_batch_size",
            "Requests stacked into one model call",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "nowcast_inference_duration_seconds",
            "Time of one batched model call",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "nowcast_queue_wait_seconds",
            "Time a request waited for its batch",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "nowcast_queue_depth", "Requests waiting for a batch", registry=self.registry
        )
        self.batches_running = Gauge(
            "nowcast_batches_running", "Model calls in progress", registry=self.registry
        )
        self.rejected = Counter(
            "nowcast_requests_rejected", "Requests refused by the queue", ["reason"], registry=self.registry
        )
        self.model_switches = Counter(
            "nowcast_model_switches", "Active model changes", registry=self.registry
        )
        self.model_info = Info("nowcast_model", "The active model", registry=self.registry)
        self.ready = Gauge("nowcast_ready", "1 when a warmed-up model is serving", registry=self.registry)
        self.fallbacks = Counter(
            "nowcast_fallbacks",
            "Forecasts answered by the fallback (extrapolation) instead of the model, by why",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("model_error", "deadline"):  # both series exist from the start, so rates work
            self.fallbacks.labels(reason)

    def model_loaded(self, name: str, version: str | None, device: str, *, switched: bool) -> None:
        """Record the model now serving (and count a switch): the one place both metrics change."""
        if switched:
            self.model_switches.inc()
        self.model_info.info({"name": name, "version": version or "builtin", "device": device})

    def watch_device(self, device: Callable[[], str | None]) -> None:
        """Report the memory of the device the active model runs on, read at scrape time."""
        self.registry.register(_DeviceMemoryCollector(device))

    def watch_feed(self, newest: Callable[[], datetime | None], stale_after_s: float) -> None:
        """Report the age of the feed's newest product (``newest()``: its reference time), read at scrape time."""
        self.registry.register(_FeedAgeCollector(newest, stale_after_s))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _DeviceMemoryCollector(Collector):
    def __init__(self, device: Callable[[], str | None]) -> None:
        self._device = device

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "nowcast_device_memory_bytes", "Memory of the inference device", labels=["device", "kind"]
        )
        device = self._device()
        if device and device.startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                index = torch.device(device).index or 0
                free, total = torch.cuda.mem_get_info(index)
                family.add_metric([device, "allocated"], float(torch.cuda.memory_allocated(index)))
                family.add_metric([device, "reserved"], float(torch.cuda.memory_reserved(index)))
                family.add_metric([device, "free"], float(free))
                family.add_metric([device, "total"], float(total))
        elif device:
            resident = _resident_bytes()
            if resident is not None:
                family.add_metric([device, "resident"], float(resident))
        yield family


class _FeedAgeCollector(Collector):
    """No sample before the first product (or while the manifest cannot be read): alert on its absence too."""

    def __init__(self, newest: Callable[[], datetime | None], stale_after_s: float) -> None:
        self._newest = newest
        self._stale_after_s = stale_after_s

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # registering asks for the names: given here, so that registering reads nothing from disk
        yield GaugeMetricFamily("nowcast_feed_product_age_seconds", "")
        yield GaugeMetricFamily("nowcast_feed_stale", "")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        age = GaugeMetricFamily(
            "nowcast_feed_product_age_seconds", "Seconds from the newest product's reference time to now"
        )
        stale = GaugeMetricFamily(
            "nowcast_feed_stale", "1 when the newest product is older than NOWCAST_STALE_AFTER_S (or there is none)"
        )
        try:
            newest = self._newest()
        except Exception:  # a scrape must not fail: the absent age sample is the signal
            logger.exception("cannot read the product feed for its age")
            newest = None
        if newest is not None:
            seconds = (datetime.now(UTC) - newest).total_seconds()
            age.add_metric([], seconds)
            stale.add_metric([], float(seconds > self._stale_after_s))
        else:
            stale.add_metric([], 1.0)
        yield age
        yield stale


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")
