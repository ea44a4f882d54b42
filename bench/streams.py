"""The load generator's streams: simulated Twilio calls, and direct streams to the double.

Both are driven by one ticker (`bench.loadgen`): `tick(seq)` sends frame `seq` (recording
its send time), and the socket callback records the round trip when the frame comes back.
Nothing here awaits per frame; a frame costs one write and one callback.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import deque

from bench import frames
from bench.wsclient import WsClient, connect
from voicebridge.ulaw import FRAME_MS

MARK_MODES = ("played", "immediate")


class Stream:
    """Send times and round trips of one stream's frames, indexed by sequence number."""

    client: WsClient | None = None

    def __init__(self, index: int, frames_total: int) -> None:
        self.index = index
        self.sent_at = array("d", [math.nan]) * frames_total
        self.rtt = array("d", [math.nan]) * frames_total
        self.sent = 0
        self.matched = 0
        self.duplicates = 0
        self.corrupt = 0  # not our frame, or another call's frame
        self.probes_back = 0
        self.failed: str | None = None

    @property
    def ready(self) -> bool:
        """A probe came back: the path through to the double is open."""
        return self.probes_back > 0

    @property
    def open(self) -> bool:
        return self.client is not None and not self.client.closed.done()

    def _echoed(self, payload_b64: str, arrived_at: float) -> None:
        tag = frames.read_tag(payload_b64)
        if tag is None or tag[0] != self.index:
            self.corrupt += 1
            return
        seq = tag[1]
        if seq == frames.PROBE_SEQ:
            self.probes_back += 1
            return
        if seq >= len(self.rtt) or math.isnan(self.sent_at[seq]):
            self.corrupt += 1
        elif not math.isnan(self.rtt[seq]):
            self.duplicates += 1
        else:
            self.rtt[seq] = arrived_at - self.sent_at[seq]
            self.matched += 1

    def samples(self) -> list[tuple[float, float]]:
        """(sent_at, rtt) of every matched frame."""
        return [(sent, rtt) for sent, rtt in zip(self.sent_at, self.rtt, strict=True) if rtt == rtt]

    def tick(self, seq: int | None, now: float) -> None:
        raise NotImplementedError

    def probe(self) -> None:
        raise NotImplementedError


class TwilioStream(Stream):
    """One call as Twilio makes it, through the bridge.

    Marks are echoed as Twilio's playback would (`mark_mode="played"`): once the audio
    queued before them has played at 8 bytes/ms, checked on this call's 20 ms tick; or at
    once (`"immediate"`). Either way the bridge's playback accounting does its real work.
    """

    def __init__(self, index: int, frames_total: int, mark_mode: str = "played") -> None:
        super().__init__(index, frames_total)
        self.call = frames.TwilioCall(index)
        self.mark_mode = mark_mode
        self._marks: deque[tuple[float, bytes]] = deque()
        self._play_until = 0.0
        self.marks_received = 0
        self.marks_echoed = 0

    async def open_call(self, host: str, port: int) -> None:
        self.client = await connect(host, port, "/media-stream", self.on_message)
        self.client.send_many([self.call.connected(), self.call.start()])

    def probe(self) -> None:
        if self.open:
            assert self.client is not None
            self.client.send(self.call.media(frames.PROBE_SEQ))

    def tick(self, seq: int | None, now: float) -> None:
        out: list[bytes] = []
        if seq is not None:
            out.append(self.call.media(seq))
        marks = self._marks
        while marks and marks[0][0] <= now:
            out.append(self.call.mark(marks.popleft()[1]))
            self.marks_echoed += 1
        if seq is not None:
            self.sent_at[seq] = time.perf_counter()
            self.sent += 1
        if out and self.open:
            assert self.client is not None
            self.client.send_many(out)

    def on_message(self, data: bytes, arrived_at: float) -> None:
        try:
            message = frames.TO_TWILIO.decode(data)
        except Exception:  # msgspec.DecodeError / ValidationError: not one of the three
            self.corrupt += 1
            return
        if isinstance(message, frames.OutMedia):
            self._play_until = max(arrived_at, self._play_until) + FRAME_MS / 1000
            self._echoed(message.media.payload, arrived_at)
        elif isinstance(message, frames.OutMark):
            self.marks_received += 1
            name = message.mark.name.encode()
            if self.mark_mode == "immediate" and self.client is not None:
                self.client.send(self.call.mark(name))
                self.marks_echoed += 1
            else:
                self._marks.append((self._play_until, name))
        else:  # clear: the queue is dropped, pending marks are echoed at once
            self._play_until = arrived_at
            self._marks = deque((arrived_at, name) for _, name in self._marks)

    @property
    def marks_pending(self) -> int:
        return len(self._marks)

    def hang_up(self) -> None:
        if self.open:
            assert self.client is not None
            self.client.send(self.call.stop())


class DirectStream(Stream):
    """The baseline: `input_audio_buffer.append` straight to the double, timed to its delta."""

    async def open_direct(self, host: str, port: int) -> None:
        path = "/v1/realtime?model=gpt-realtime"
        headers = {"Authorization": "Bearer sk-bench"}
        self.client = await connect(host, port, path, self.on_message, headers)

    def probe(self) -> None:
        if self.open:
            assert self.client is not None
            self.client.send(frames.append_event(frames.PROBE_SEQ, self.index))

    def tick(self, seq: int | None, now: float) -> None:
        if seq is None:
            return
        self.sent_at[seq] = time.perf_counter()
        self.sent += 1
        if self.open:
            assert self.client is not None
            self.client.send(frames.append_event(seq, self.index))

    def on_message(self, data: bytes, arrived_at: float) -> None:
        try:
            event = frames.FROM_DOUBLE.decode(data)
        except Exception:
            self.corrupt += 1
            return
        if event.type == "response.output_audio.delta":
            self._echoed(event.delta, arrived_at)
