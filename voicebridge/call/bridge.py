"""The per-call bridge, sans I/O: Twilio messages and Realtime events in, frames out.

The call's I/O (`voicebridge.call.stream`) feeds parsed messages to `CallBridge` and sends what
it queued; everything a call decides — what to forward, when to clear Twilio's queue,
how far to truncate the model's memory, what goes in the transcript — happens here,
where unit tests drive it without sockets and with a fake clock.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from voicebridge.call.playback import PlaybackTracker
from voicebridge.call.tools import END_CALL, TRANSFER_CALL
from voicebridge.call.transcript import CallInfo, Transcript, Turn
from voicebridge.realtime import events as rt
from voicebridge.realtime.session import (
    LIVENESS_PROBE,
    AgentConfig,
    greeting_instructions,
    session_update,
)
from voicebridge.telephony.messages import (
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
from voicebridge.telephony.outbound import instructions_digest
from voicebridge.ulaw import BYTES_PER_MS, FRAME_MS, silence

MAX_FRAME_BYTES = 200 * BYTES_PER_MS  # Twilio sends 20 ms frames: far larger is not audio
MAX_GAP_FILL_MS = 10_000  # longer gaps are a stalled stream, not omitted silence
SEED_PREFIX = "vb_seed_"  # ids of the past turns we re-tell a new session
HELD_AUDIO_FRAMES = 150  # caller audio kept while the Realtime session reconnects: 3 s


# A session that answered its configuration and then lived this long (or completed a
# response) worked: losing it starts a new outage. One that dies sooner does not stop
# the clock of the outage it was meant to end.
WORKING_AFTER_S = 3.0
PROBE_AFTER_S = 2.0  # a session this quiet is asked for a sign of life (at most)
STALL_CHECK_IN = (
    "The phone line dropped for a few seconds. If the caller was in the middle of saying "
    "something, say so in a few words and ask them to repeat it; otherwise carry on."
)
# A hang-up or transfer waits for the agent's last words to be heard, per Twilio's mark
# echoes; from a peer that doesn't echo them, for their real-time length plus a grace
# (network and jitter), and never longer than the cap.
LAST_WORDS_GRACE_S = 2.0
LAST_WORDS_MAX_S = 15.0

TIME_LIMIT_GOODBYE = (
    "The call has reached its time limit. Tell the caller so in one short sentence and say goodbye."
)


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """A user tool the model called; the socket loop runs it off the audio path."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class CallAction:
    """Something only Twilio's REST API can do to the call."""

    kind: Literal["hang_up", "transfer"]


class CallBridge:
    """One call's state between Twilio and the Realtime API."""

    # A fixed layout: attribute reads on the audio path stay fast.
    __slots__ = (
        "_agent_items",
        "_audio_item",
        "_awaiting",
        "_caller_speaking",
        "_clock",
        "_configured",
        "_connected",
        "_cut_items",
        "_deferred_response",
        "_events",
        "_held_audio",
        "_last_words_until",
        "_lost_at_ms",
        "_next_timestamp",
        "_owed",
        "_responding",
        "_seen",
        "_session_started_at",
        "_started_at",
        "_time_limit_reached",
        "_turn_ended_at",
        "_writer",
        "config",
        "first_audio_turn",
        "frames_in",
        "frames_out",
        "pending_action",
        "playback",
        "session_working",
        "sessions",
        "stopped",
        "to_openai",
        "to_twilio",
        "tool_requests",
        "transcript",
    )

    def __init__(self, config: AgentConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        # Frames queued for each socket, oldest first. The I/O writes them and empties
        # the list (at once: writing keeps no reference to it).
        self.to_openai: list[str] = []
        self.to_twilio: list[str] = []
        self.playback = PlaybackTracker()
        self.transcript: Transcript | None = None
        self._writer: StreamWriter | None = None
        self._started_at = 0.0
        self._next_timestamp: int | None = None
        self._cut_items: set[str] = set()
        self._agent_items: set[str] = set()
        self._audio_item = ""  # the item whose audio was sent last
        self.stopped = False
        self.frames_in = 0
        self.frames_out = 0
        # Realtime session state: several sessions may serve one call (reconnects, rollover).
        self.sessions = 0
        self.session_working = False
        self._connected = False
        self._configured = False  # the session answered its session.update
        self._session_started_at = 0.0
        self._held_audio: deque[str] = deque(maxlen=HELD_AUDIO_FRAMES)
        # Liveness: events counts every server event (one increment, the audio path's
        # whole share); an answer is owed since (when, events then) until events moves.
        self._events = 0
        self._awaiting: tuple[float, int] | None = None
        self._seen = (0.0, 0)  # when the watchdog last saw `_events` move, and its value
        # The response the caller is waiting for (its instructions, "" for none), until
        # one completes: a new session after a loss is asked for it again.
        self._owed: str | None = None
        self._responding = False
        self._caller_speaking = False
        self._lost_at_ms: int | None = None
        self._turn_ended_at: float | None = None
        self.first_audio_turn: Turn | None = None
        # Tools and call control.
        self.tool_requests: list[ToolRequest] = []
        self._deferred_response: str | None = None  # instructions ("" for none) to send next
        # A hang-up or transfer the agent asked for, done once its last words have played.
        self.pending_action: CallAction | None = None
        self._last_words_until = 0.0  # the latest `pending_action` waits
        self._time_limit_reached = False

    # Output ----------------------------------------------------------------------

    def now_ms(self) -> int:
        """Milliseconds since the stream started: the transcript's timeline."""
        return int((self._clock() - self._started_at) * 1000)

    # Twilio side -----------------------------------------------------------------

    def start(self, message: Start) -> CallInfo:
        """The stream started: set up the call; the Realtime session is opened next."""
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
        self.transcript.details["instructions"] = {
            "source": "call" if "instructions" in params else "default",
            "sha256": instructions_digest(self.config.instructions),
        }
        if params.get("metadata"):
            try:
                self.transcript.details["metadata"] = json.loads(params["metadata"])
            except (ValueError, RecursionError):  # json's answer to deep nesting
                raise MessageError("metadata parameter is not JSON") from None
        self._writer = StreamWriter(call.stream_sid)
        self._started_at = self._clock()
        return call

    # Realtime sessions -----------------------------------------------------------

    def session_opened(self) -> None:
        """A Realtime socket is open: configure it; a replacement session is re-seeded
        with the conversation so far and gets the caller audio held during the gap."""
        assert self.transcript is not None
        now = self._clock()
        self.sessions += 1
        self._connected = True
        self._configured = self.session_working = False
        self._session_started_at = now
        self._awaiting = None
        self._seen = (now, self._events)
        self._responding = self._caller_speaking = False
        self._deferred_response = None  # what it asked for is owed, and asked for below
        self.to_openai.append(session_update(self.config))
        if self.sessions == 1:
            if self.config.greeting:  # nothing said yet: the agent opens the call
                self._owed = greeting_instructions(self.config.greeting)
        else:
            for n, turn in enumerate(self.transcript.spoken_turns()):
                item_id = f"{SEED_PREFIX}{self.sessions}_{n}"
                self.to_openai.append(rt.conversation_message(item_id, turn.role, turn.text))
            gap_ms = self.now_ms() - (self._lost_at_ms or 0)
            self.transcript.note("realtime_reconnected", self.now_ms(), gap_ms=gap_ms)
        # What the caller said while no session was open (before the first one, or
        # across a reconnect) reaches the model, not the void.
        self.to_openai.extend(self._held_audio)
        self._held_audio.clear()
        if self._owed is not None:  # the greeting, or the answer the last session owed
            self._request_response(self._owed)

    def session_lost(self, reason: str) -> None:
        """The Realtime socket is gone; caller audio is held (bounded) until the next one."""
        if not self._connected:
            return
        assert self.transcript is not None
        self._connected = False
        self._awaiting = None
        self._lost_at_ms = self.now_ms()
        self.to_openai.clear()
        if reason == "stalled" and self._owed is None:
            # What the caller said to the silent session is lost: the agent says so.
            self._owed = STALL_CHECK_IN
        self.transcript.note("realtime_lost", self._lost_at_ms, reason=reason)

    def give_up(self) -> None:
        """No Realtime session could be had: the call ends, and the transcript says why."""
        assert self.transcript is not None
        self.transcript.note("realtime_unavailable", self.now_ms())

    def watch(self, stall_timeout_s: float, max_session_s: float) -> str | None:
        """The session watchdog's decision, asked a few times a second: "stalled" or
        "rollover" when the session must be replaced, else None. A session that has been
        quiet for a while is asked for a sign of life (queued in `to_openai`), so a
        stall is also found while nobody is talking; one that has answered its
        configuration and lived long enough is marked as working."""
        if not self._connected:
            return None
        now = self._clock()
        if self.stalled(stall_timeout_s):
            return "stalled"
        if self._configured and not self.session_working:
            self.session_working = now - self._session_started_at >= WORKING_AFTER_S
        seen_at, seen = self._seen
        if self._events != seen:
            self._seen = (now, self._events)
        elif self._awaiting is None and now - seen_at >= min(PROBE_AFTER_S, stall_timeout_s / 2):
            self.to_openai.append(LIVENESS_PROBE)
            self._awaiting = (now, self._events)
            self._seen = (now, seen)
        return "rollover" if self.due_for_rollover(max_session_s) else None

    def stalled(self, timeout_s: float) -> bool:
        """The session owes us an answer (its configuration, a turn's, a sign of life)
        for longer than `timeout_s`."""
        now = self._clock()
        if not self._configured:
            return self._connected and now - self._session_started_at > timeout_s
        awaiting = self._awaiting
        if awaiting is None:
            return False
        if self._events != awaiting[1]:
            self._awaiting = None  # answered
            return False
        return now - awaiting[0] > timeout_s

    def due_for_rollover(self, max_session_s: float) -> bool:
        """The session is near its lifetime limit and the conversation is at a pause, so
        moving to a fresh session now cuts nobody off."""
        return (
            self._connected
            and self._clock() - self._session_started_at >= max_session_s
            and not self._responding
            and not self._caller_speaking
            and not self.playback.playing
        )

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
        elif isinstance(message, Dtmf):
            self._keypress(message.dtmf.digit)
        elif isinstance(message, Start):
            raise MessageError("unexpected second start message")

    def _media(self, media: MediaPayload) -> None:
        if media.track not in ("inbound", "inbound_track"):
            return
        payload = media.payload
        try:
            size = len(binascii.a2b_base64(payload, strict_mode=True))
        except ValueError as error:  # binascii.Error, or non-ASCII text
            raise MessageError(f"media payload is not base64 ({error})", "bad audio") from None
        if not 0 < size <= MAX_FRAME_BYTES:
            raise MessageError(f"media payload of {size} bytes (Twilio sends 160)", "bad audio")
        # While the Realtime session reconnects, caller audio is held, then replayed.
        frames = self.to_openai if self._connected else self._held_audio
        if media.timestamp is not None:
            gap_ms = self._gap_before(media.timestamp, size)
            if gap_ms:  # Twilio may omit silent frames; server VAD needs the silence
                gap = base64.b64encode(silence(gap_ms)).decode()
                frames.append(rt.append_audio(gap))
        self.frames_in += 1
        frames.append(rt.append_audio(payload))

    def _keypress(self, digit: str) -> None:
        """Keypad presses reach the model as input, and the transcript as a caller turn."""
        if len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise MessageError(f"dtmf digit {digit!r}", "bad dtmf")
        assert self.transcript is not None
        turn = self.transcript.turn("caller", f"dtmf_{self.now_ms()}_{digit}", self.now_ms())
        turn.text, turn.transcribed, turn.dtmf = f"(pressed {digit})", True, digit
        if self._connected:
            self.to_openai.append(rt.user_text(f"The caller pressed {digit} on the keypad."))
            self._request_response()

    def _gap_before(self, at: int, size: int) -> int:
        """Milliseconds of silence Twilio left out before this frame (at `at` ms): 0 if
        none was, or if the gap is too long to be left-out silence (the stream stalled)."""
        expected = self._next_timestamp
        self._next_timestamp = at + size // BYTES_PER_MS
        if expected is None or not FRAME_MS <= at - expected <= MAX_GAP_FILL_MS:
            return 0
        return at - expected

    # Realtime side ---------------------------------------------------------------

    def realtime_event(self, event: rt.ServerEvent) -> None:
        """Handle one Realtime server event (already decoded).

        Raises `EventError` for an audio delta that is not clean base64; the caller
        logs it and carries on.
        """
        transcript = self.transcript
        if transcript is None:
            return
        self._events += 1  # any event proves the session is alive
        if isinstance(event, rt.AudioDelta):
            self._agent_audio(event, transcript)
        elif isinstance(event, rt.SpeechStarted):
            self._caller_speaking = True
            transcript.turn("caller", event.item_id, self._session_ms(event.audio_start_ms))
            if self.playback.playing:
                self._barge_in(transcript)
        elif isinstance(event, rt.SpeechStopped):
            self._caller_speaking = False
            self._turn_ended_at = self._clock()
            self._awaiting = (self._turn_ended_at, self._events)
            if self._owed is None:
                self._owed = ""  # the server's VAD asks for the answer itself
        elif isinstance(event, rt.ResponseCreated):
            self._responding = True
        elif isinstance(event, rt.InputTranscriptCompleted):
            transcript.caller_said(event.item_id, event.transcript, self.now_ms())
        elif isinstance(event, rt.InputTranscriptFailed):
            transcript.caller_said(event.item_id, "", self.now_ms())
        elif isinstance(event, rt.OutputTranscriptDone):
            transcript.agent_said(event.item_id, event.transcript, self.now_ms())
        elif isinstance(event, rt.ItemAdded | rt.ItemCreated):
            self._item_added(event.item, transcript)
        elif isinstance(event, rt.ResponseDone):
            self._close_audio_group()  # so we learn when the response's last words played
            self._responding = False
            if event.response.status in ("completed", "cancelled"):
                self._owed = None  # answered, or the caller cut in (and is owed anew)
                self.session_working = self._configured
            self._count_usage(event.response, transcript)
            if self._deferred_response is not None:
                instructions, self._deferred_response = self._deferred_response, None
                self._request_response(instructions)
        elif isinstance(event, rt.FunctionCallArgumentsDone):
            self._function_call(event, transcript)
        elif isinstance(event, rt.SessionUpdated):
            self._configured = True

    # Tools and call control --------------------------------------------------------

    def _function_call(self, event: rt.FunctionCallArgumentsDone, transcript: Transcript) -> None:
        transcript.note(
            "tool_call",
            self.now_ms(),
            name=event.name,
            arguments=event.arguments,
            call_id=event.call_id,
        )
        if event.name == END_CALL:
            self._act_after_last_words(CallAction("hang_up"))
            self.tool_result(event.call_id, event.name, '{"result": "the call ends now"}', False)
        elif event.name == TRANSFER_CALL:
            self._act_after_last_words(CallAction("transfer"))
            self.tool_result(event.call_id, event.name, '{"result": "transferring"}', False)
        else:
            self.tool_requests.append(ToolRequest(event.call_id, event.name, event.arguments))

    def tool_result(self, call_id: str, name: str, output: str, respond: bool = True) -> None:
        """A tool finished: the model gets its output and, usually, a turn to talk about it."""
        assert self.transcript is not None
        self.transcript.note(
            "tool_result", self.now_ms(), name=name, output=output, call_id=call_id
        )
        if not self._connected:
            return
        self.to_openai.append(rt.function_output(call_id, output))
        if respond:
            self._request_response()

    def _request_response(self, instructions: str = "") -> None:
        """Ask for a response now, or right after the active one (the API refuses two).
        It is owed until one completes: a session lost meanwhile is replaced by one
        that is asked again."""
        self._owed = instructions
        if self._responding:
            self._deferred_response = instructions
        else:
            self.to_openai.append(rt.create_response(instructions or None))
            self._responding = True

    def time_limit_reached(self) -> None:
        """MAX_CALL_SECONDS: the agent says a short goodbye, then the call ends."""
        if self._time_limit_reached or self.transcript is None:
            return
        self._time_limit_reached = True
        self.transcript.note("time_limit", self.now_ms())
        self._act_after_last_words(CallAction("hang_up"))
        if self._connected:
            self._request_response(TIME_LIMIT_GOODBYE)

    def _act_after_last_words(self, action: CallAction) -> None:
        self.pending_action = action
        self._last_words_until = self._clock() + LAST_WORDS_MAX_S

    def due_action(self) -> CallAction | None:
        """The hang-up or transfer to carry out now: once the agent's last words (its
        goodbye, its "I'm transferring you") have been heard, per Twilio's marks; or, if
        Twilio does not echo them, once they should have been (`LAST_WORDS_GRACE_S`,
        `LAST_WORDS_MAX_S`): a peer that stops reading must not keep the call up."""
        action = self.pending_action
        if action is None:
            return None
        if self._responding or self.playback.playing:
            deadline = self._last_words_until
            if not self._responding:  # all of them sent: due once they should have played
                deadline = min(deadline, self.playback.played_by + LAST_WORDS_GRACE_S)
            if self._clock() < deadline:
                return None
        self.pending_action = None
        return action

    def _session_ms(self, audio_ms: int) -> int:
        """Call time of a position in the current session's input audio."""
        return int((self._session_started_at - self._started_at) * 1000) + audio_ms

    def _agent_audio(self, event: rt.AudioDelta, transcript: Transcript) -> None:
        delta = event.delta
        size = rt.audio_bytes(delta)  # checked before it is framed for Twilio
        item_id = event.item_id
        if item_id != self._audio_item and not self._next_audio_item(item_id, transcript):
            return
        writer = self._writer
        assert writer is not None  # (else no item could have begun)
        mark = self.playback.queued(item_id, size, self._clock())
        self.to_twilio.append(writer.media(delta))
        if mark is not None:
            self.to_twilio.append(writer.mark(mark))
        self.frames_out += 1

    def _next_audio_item(self, item_id: str, transcript: Transcript) -> bool:
        """Audio of another item than the last: False if it must not play (the caller
        cut it off); else the previous item's audio ends with its mark, and an item's
        first audio begins an agent turn."""
        if item_id in self._cut_items or self._writer is None:
            return False  # the caller interrupted this item: late audio must not play
        if item_id not in self._agent_items:
            self._agent_items.add(item_id)
            turn = transcript.turn("agent", item_id, self.now_ms())
            turn.start_ms = self.now_ms()
            if self._turn_ended_at is not None:
                turn.latency_ms = round((self._clock() - self._turn_ended_at) * 1000)
                self._turn_ended_at = None
                self.first_audio_turn = turn  # the socket loop adds its own share
        self._close_audio_group()  # each item's audio ends with its own mark
        self._audio_item = item_id
        return True

    def _close_audio_group(self) -> None:
        mark = self.playback.close_group()
        if mark is not None and self._writer is not None:
            self.to_twilio.append(self._writer.mark(mark))

    def _barge_in(self, transcript: Transcript) -> None:
        """The caller talks over queued agent audio: stop playback now, and make the
        model's memory end where the caller stopped hearing it."""
        assert self._writer is not None
        self.to_twilio.append(self._writer.clear())
        now_ms = self.now_ms()
        self._audio_item = ""  # what follows of a cut item is checked, and dropped
        for cut in self.playback.interrupt(self._clock()):
            self._cut_items.add(cut.item_id)
            if self._connected:
                self.to_openai.append(rt.truncate(cut.item_id, cut.heard_ms))
            transcript.agent_cut(cut.item_id, cut.heard_ms, cut.produced_ms, now_ms)

    def _item_added(self, item: rt.Item, transcript: Transcript) -> None:
        if item.type != "message" or item.id.startswith(SEED_PREFIX):
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
        got_in, got_out = got.input_token_details, got.output_token_details
        usage.input_audio_tokens += got_in.audio_tokens or 0
        usage.input_text_tokens += got_in.text_tokens or 0
        usage.input_cached_tokens += got_in.cached_tokens or 0
        usage.output_audio_tokens += got_out.audio_tokens or 0
        usage.output_text_tokens += got_out.text_tokens or 0
