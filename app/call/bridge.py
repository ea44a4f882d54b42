"""The per-call bridge, sans I/O: Twilio messages and Realtime events in, frames out.

The socket loops (`app.call.stream`) feed parsed messages to `CallBridge` and send what
it queued; everything a call decides — what to forward, when to clear Twilio's queue,
how far to truncate the model's memory, what goes in the transcript — happens here,
where unit tests drive it without sockets and with a fake clock.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable

from app.call.playback import BYTES_PER_MS, PlaybackTracker
from app.call.transcript import CallInfo, Transcript
from app.realtime import events as rt
from app.realtime.session import AgentConfig, greeting_instructions, session_update
from app.telephony.messages import (
    Dtmf,
    Mark,
    Media,
    MediaPayload,
    MessageError,
    Start,
    Stop,
    StreamWriter,
    TwilioMessage,
    UnknownEvent,
)

FRAME_MS = 20
MAX_FRAME_BYTES = 1600  # 200 ms; Twilio sends 20 ms frames, anything far larger is not audio
MAX_GAP_FILL_MS = 10_000  # longer gaps are a stalled stream, not omitted silence
_SILENCE = b"\xff"  # μ-law silence


class CallBridge:
    """One call's state between Twilio and the Realtime API."""

    def __init__(self, config: AgentConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._to_openai: list[str] = []
        self._to_twilio: list[str] = []
        self.playback = PlaybackTracker()
        self.transcript: Transcript | None = None
        self._writer: StreamWriter | None = None
        self._started_at = 0.0
        self._next_timestamp: int | None = None
        self._cut_items: set[str] = set()
        self._agent_items: set[str] = set()
        self.stopped = False
        self.frames_in = 0
        self.frames_out = 0

    # Output ----------------------------------------------------------------------

    def data_to_openai(self) -> list[str]:
        """Frames queued for the Realtime socket, oldest first; the queue is emptied."""
        out, self._to_openai = self._to_openai, []
        return out

    def data_to_twilio(self) -> list[str]:
        out, self._to_twilio = self._to_twilio, []
        return out

    def now_ms(self) -> int:
        """Milliseconds since the stream started: the transcript's timeline."""
        return int((self._clock() - self._started_at) * 1000)

    # Twilio side -----------------------------------------------------------------

    def start(self, message: Start) -> CallInfo:
        """The stream started: set up the call and queue the session configuration."""
        info = message.start
        params = info.custom_parameters
        call = CallInfo(
            call_sid=info.call_sid,
            stream_sid=message.stream_sid or info.stream_sid,
            direction=params.get("direction", "inbound"),
            from_number=params.get("from", ""),
            to_number=params.get("to", ""),
        )
        self.transcript = Transcript(call)
        self._writer = StreamWriter(call.stream_sid)
        self._started_at = self._clock()
        self._to_openai.append(session_update(self.config))
        if self.config.greeting:
            instructions = greeting_instructions(self.config.greeting)
            self._to_openai.append(rt.create_response(instructions))
        return call

    def twilio_message(self, message: TwilioMessage | UnknownEvent) -> None:
        """Handle one message from Twilio after `start`.

        Raises `MessageError` for a message that is well-formed JSON but unusable
        (e.g. a payload that is not base64); the caller logs it and carries on.
        """
        if isinstance(message, Media):
            self._media(message.media)
        elif isinstance(message, Mark):
            self.playback.mark_played(message.mark.name, self._clock())
        elif isinstance(message, Stop):
            self.stopped = True
        elif isinstance(message, Dtmf | Start):
            raise MessageError(f"unexpected {type(message).__name__.lower()} message")

    def _media(self, media: MediaPayload) -> None:
        if media.track not in ("inbound", "inbound_track"):
            return
        payload = media.payload
        try:
            size = len(binascii.a2b_base64(payload, strict_mode=True))
        except binascii.Error as error:
            raise MessageError(f"media payload is not base64 ({error})") from None
        if not 0 < size <= MAX_FRAME_BYTES:
            raise MessageError(f"media payload of {size} bytes (Twilio sends 160)")
        if media.timestamp:
            self._fill_gap(media.timestamp, size)
        self.frames_in += 1
        self._to_openai.append(rt.append_audio(payload))

    def _fill_gap(self, timestamp: str, size: int) -> None:
        """Twilio may omit silent frames; server VAD needs the silence to end a turn."""
        try:
            at = int(timestamp)
        except ValueError:
            raise MessageError(f"media timestamp {timestamp!r} is not a number") from None
        expected = self._next_timestamp
        self._next_timestamp = at + size // BYTES_PER_MS
        if expected is None:
            return
        gap_ms = at - expected
        if FRAME_MS <= gap_ms <= MAX_GAP_FILL_MS:
            silence = base64.b64encode(_SILENCE * (gap_ms * BYTES_PER_MS)).decode()
            self._to_openai.append(rt.append_audio(silence))

    # Realtime side ---------------------------------------------------------------

    def realtime_event(self, event: rt.ServerEvent) -> None:
        """Handle one Realtime server event (already decoded)."""
        transcript = self.transcript
        if transcript is None:
            return
        if isinstance(event, rt.AudioDelta):
            self._agent_audio(event, transcript)
        elif isinstance(event, rt.SpeechStarted):
            transcript.turn("caller", event.item_id, event.audio_start_ms)
            if self.playback.playing:
                self._barge_in(transcript)
        elif isinstance(event, rt.InputTranscriptCompleted):
            transcript.caller_said(event.item_id, event.transcript, self.now_ms())
        elif isinstance(event, rt.InputTranscriptFailed):
            transcript.caller_said(event.item_id, "", self.now_ms())
        elif isinstance(event, rt.OutputTranscriptDone):
            transcript.agent_said(event.item_id, event.transcript, self.now_ms())
        elif isinstance(event, rt.ItemAdded | rt.ItemCreated):
            self._item_added(event.item, transcript)
        elif isinstance(event, rt.ResponseDone):
            self._count_usage(event.response, transcript)

    def _agent_audio(self, event: rt.AudioDelta, transcript: Transcript) -> None:
        item_id = event.item_id
        if item_id in self._cut_items or self._writer is None:
            return  # the caller interrupted this item: late audio must not play
        if item_id not in self._agent_items:
            self._agent_items.add(item_id)
            transcript.turn("agent", item_id, self.now_ms()).start_ms = self.now_ms()
        mark = self.playback.queued(item_id, _decoded_size(event.delta), self._clock())
        self._to_twilio.append(self._writer.media(event.delta))
        self._to_twilio.append(self._writer.mark(mark))
        self.frames_out += 1

    def _barge_in(self, transcript: Transcript) -> None:
        """The caller talks over queued agent audio: stop playback now, and make the
        model's memory end where the caller stopped hearing it."""
        assert self._writer is not None
        self._to_twilio.append(self._writer.clear())
        now_ms = self.now_ms()
        for cut in self.playback.interrupt(self._clock()):
            self._cut_items.add(cut.item_id)
            self._to_openai.append(rt.truncate(cut.item_id, cut.heard_ms))
            transcript.agent_cut(cut.item_id, cut.heard_ms, cut.produced_ms, now_ms)

    def _item_added(self, item: rt.Item, transcript: Transcript) -> None:
        if item.type != "message":
            return
        if item.role == "user":
            transcript.turn("caller", item.id, self.now_ms())
        elif item.role == "assistant":
            transcript.turn("agent", item.id, self.now_ms())

    @staticmethod
    def _count_usage(response: rt.Response, transcript: Transcript) -> None:
        usage = transcript.usage
        usage.responses += 1
        if response.usage is None:
            return
        got = response.usage
        usage.input_tokens += got.input_tokens
        usage.output_tokens += got.output_tokens
        usage.input_audio_tokens += int(got.input_token_details.get("audio_tokens") or 0)
        usage.input_text_tokens += int(got.input_token_details.get("text_tokens") or 0)
        usage.input_cached_tokens += int(got.input_token_details.get("cached_tokens") or 0)
        usage.output_audio_tokens += int(got.output_token_details.get("audio_tokens") or 0)
        usage.output_text_tokens += int(got.output_token_details.get("text_tokens") or 0)


def _decoded_size(payload_b64: str) -> int:
    """Bytes a base64 string decodes to, without decoding it."""
    if not payload_b64:
        return 0
    padding = 2 if payload_b64.endswith("==") else 1 if payload_b64.endswith("=") else 0
    return len(payload_b64) * 3 // 4 - padding
