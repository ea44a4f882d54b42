"""Prometheus metrics, served at `GET /metrics`.

Counted once per call when it ends (frames, tokens, cost) or per turn (latency), never per
audio frame, so the hot path pays nothing for them. Each app has its own registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from voicebridge.call.transcript import Transcript
from voicebridge.storage.base import DeliveryStats

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, active_calls: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        gauge = Gauge("voicebridge_active_calls", "Calls bridged right now", registry=self.registry)
        gauge.set_function(lambda: float(active_calls()))
        self.calls = Counter(
            "voicebridge_calls", "Finished calls by outcome", ["outcome"], registry=self.registry
        )
        self.turn_latency = Histogram(
            "voicebridge_turn_latency_seconds",
            "Caller's turn end (VAD) to the agent's first audio sent to Twilio",
            buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
            registry=self.registry,
        )
        self.frames = Counter(
            "voicebridge_audio_frames",
            "Audio frames bridged",
            ["direction"],
            registry=self.registry,
        )
        self.reconnects = Counter(
            "voicebridge_realtime_reconnects",
            "Realtime sessions replaced mid-call",
            registry=self.registry,
        )
        self.tokens = Counter(
            "voicebridge_tokens", "Realtime tokens used", ["kind"], registry=self.registry
        )
        self.cost = Counter(
            "voicebridge_estimated_cost_usd", "Estimated Realtime cost", registry=self.registry
        )

    def watch_delivery(self, stats: Callable[[], DeliveryStats]) -> None:
        """Transcript uploads, read from the store at scrape time."""
        self.registry.register(_DeliveryCollector(stats))

    def call_finished(
        self,
        outcome: str,
        transcript: Transcript,
        frames_in: int,
        frames_out: int,
        cost_usd: float | None,
    ) -> None:
        self.calls.labels(outcome).inc()
        self.frames.labels("in").inc(frames_in)
        self.frames.labels("out").inc(frames_out)
        self.reconnects.inc(
            sum(1 for e in transcript.events if e["type"] == "realtime_reconnected")
        )
        usage = transcript.usage
        for kind, count in (
            ("input_audio", usage.input_audio_tokens),
            ("input_text", usage.input_text_tokens),
            ("input_cached", usage.input_cached_tokens),
            ("output_audio", usage.output_audio_tokens),
            ("output_text", usage.output_text_tokens),
        ):
            self.tokens.labels(kind).inc(count)
        if cost_usd:
            self.cost.inc(cost_usd)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _DeliveryCollector(Collector):
    def __init__(self, stats: Callable[[], DeliveryStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        yield CounterMetricFamily(
            "voicebridge_transcript_uploads", "Transcripts delivered", value=stats.uploaded
        )
        yield CounterMetricFamily(
            "voicebridge_transcript_upload_failures",
            "Failed transcript upload attempts (each is retried)",
            value=stats.failed_attempts,
        )
        yield GaugeMetricFamily(
            "voicebridge_transcripts_pending",
            "Transcripts waiting in the spool",
            value=stats.pending,
        )
        yield GaugeMetricFamily(
            "voicebridge_transcripts_in_memory",
            "Transcripts neither stored nor spooled, held in memory and retried",
            value=stats.in_memory,
        )
        yield CounterMetricFamily(
            "voicebridge_transcripts_lost",
            "Transcripts dropped: memory bound reached, or still undelivered at shutdown",
            value=stats.lost,
        )
