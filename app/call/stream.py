"""The I/O of one call: Twilio's media stream on one side, the Realtime WebSocket on
the other, `CallBridge` in between. Thin by design: parse, hand over, send.

Messages are handled in the sockets' own receive callbacks, so a frame goes from one
socket to the other with no task switch and no await. Tasks are kept for what waits:
connecting, the session watchdog, tools, Twilio's REST calls, and each socket's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from litestar import WebSocket
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from app.call.bridge import CallAction, CallBridge, ToolRequest
from app.call.cost import cost_record
from app.call.media_socket import MediaStreamSocket
from app.call.tools import Tool, run_tool
from app.call.transcript import Turn
from app.logs import RateLimitedLog, call_sid_var
from app.metrics import Metrics
from app.realtime.connection import RealtimeConnection, connect_realtime
from app.realtime.events import Error, EventError, parse_server_event
from app.realtime.session import AgentConfig
from app.settings import Settings
from app.storage.base import TranscriptNotFound, TranscriptStore, check_call_sid
from app.telephony.messages import (
    Connected,
    MessageError,
    Start,
    UnknownEvent,
    parse_message,
)
from app.telephony.outbound import call_instructions, signed_payload
from app.telephony.signatures import InvalidToken, StreamTokens, webhook_signature_valid

log = logging.getLogger("voicebridge.call")

START_TIMEOUT_S = 10.0
# Streams that have not sent a valid `start` yet, at once: Twilio's wait a few ms, so
# only a flood reaches this, and it cannot hold more than this many sockets' bounds.
MAX_AWAITING_START = 128
# Sessions lost (not rolled over) in one call before it ends with the apology: a network
# that keeps failing gets no endless loop of new sessions.
MAX_SESSION_LOSSES = 20
ERRORS_LOGGED_PER_CODE = 3  # OpenAI error events, per call
MAX_ERROR_CODES = 32  # distinct codes counted per call; the rest count as "other"
GIVE_UP = "give up"  # a session that never worked outlived the outage's deadline
ENDING_TIMEOUT_S = 5.0  # after the drain: for the calls still live to hang up and save
TRANSCRIPTION_GRACE_S = 0.8  # after hang-up, wait this long at most for the last caller text
WATCH_INTERVAL_S = 0.25


NORMAL_CLOSURE = 1000
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


class CallControl(Protocol):
    """What Twilio's REST API does for a call: blocking calls, run off the event loop."""

    def hang_up(self, call_sid: str) -> None: ...

    def transfer(self, call_sid: str, number: str) -> None: ...


@dataclass
class CallServices:
    """What every call shares: settings, the transcript store, stream tokens, live calls."""

    settings: Settings
    store: TranscriptStore
    tokens: StreamTokens
    metrics: Metrics
    active: dict[str, _LiveCall] = field(default_factory=dict)
    draining: bool = False
    tools: dict[str, Tool] = field(default_factory=dict)
    control: CallControl | None = None
    start_timeout_s: float = START_TIMEOUT_S
    awaiting_start: int = 0  # streams open that have not proven their call yet
    max_awaiting_start: int = MAX_AWAITING_START
    # Streams refused before they proved their call: anyone can open one, so at most one
    # line per kind every 10 s, with a count of the rest.
    refusals: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log))


async def handle_media_stream(socket: MediaStreamSocket, services: CallServices) -> None:
    """Serve one Twilio media stream, then log what it sent that was dropped."""
    try:
        await _serve_stream(socket, services)
    finally:
        socket.bad_input.summary()


async def _serve_stream(socket: MediaStreamSocket, services: CallServices) -> None:
    """Serve one Twilio media stream from `start` to hang-up, then save the transcript.

    Nothing reaches OpenAI (no session is even opened) before `start` proves the stream
    belongs to a call we answered; until then a stream is one of a bounded number.
    """
    if services.awaiting_start >= services.max_awaiting_start:
        services.refusals.warning(
            "refused a media stream: %d streams already wait for their start",
            services.awaiting_start,
        )
        await _close(socket, TRY_AGAIN_LATER)  # before accept: the upgrade is refused (403)
        return
    services.awaiting_start += 1
    try:
        start = await _accept_and_start(socket, services)
    finally:
        services.awaiting_start -= 1
    if start is None:
        return
    call_sid_var.set(start.start.call_sid)
    refusal = _refusal(start, services)
    if refusal is not None:
        services.refusals.warning("rejected a media stream: %s", refusal)
        await _close(socket, POLICY_VIOLATION)
        return
    try:
        bridge = CallBridge(_agent_config(services, start.start.custom_parameters))
        call = bridge.start(start)
    except ValueError as error:  # unusable call parameters (MessageError is a ValueError)
        services.refusals.warning("rejected a media stream: %s", error)
        await _close(socket, POLICY_VIOLATION)
        return
    loops = _LiveCall(socket, bridge, services)
    services.active[call.call_sid] = loops
    log.info(
        "call started",
        extra={"direction": call.direction, "from_": call.from_number, "to": call.to_number},
    )
    try:
        await loops.run()
    finally:
        try:
            await _close(socket, NORMAL_CLOSURE)
            await _finish(bridge, services, loops.outcome)
        finally:  # a call counts until its transcript is saved: the drain waits for that
            services.active.pop(call.call_sid, None)


async def _accept_and_start(socket: MediaStreamSocket, services: CallServices) -> Start | None:
    """Accept the stream and wait (bounded) for its `start`; None if it never came or the
    handshake's signature is wrong (the stream is closed then)."""
    await socket.accept()
    if not _handshake_signed(socket, services.settings):
        services.refusals.warning(
            "rejected a media stream: bad X-Twilio-Signature on the handshake"
        )
        await _close(socket, POLICY_VIOLATION)
        return None
    try:
        return await asyncio.wait_for(_receive_start(socket), services.start_timeout_s)
    except TimeoutError:
        services.refusals.warning(
            "no start message within %.1f s; closing stream", services.start_timeout_s
        )
        await _close(socket, POLICY_VIOLATION)
        return None


def _agent_config(services: CallServices, parameters: dict[str, str]) -> AgentConfig:
    """The deployment's agent, with what an outbound call asked for on top."""
    schemas = tuple(tool.schema() for tool in services.tools.values())
    config = AgentConfig.from_settings(services.settings, schemas)
    instructions = call_instructions(parameters)
    if instructions:
        config = replace(config, instructions=instructions)
    if "greeting" in parameters:
        config = replace(config, greeting=parameters["greeting"])
    return config


def _handshake_signed(socket: WebSocket[Any, Any, Any], settings: Settings) -> bool:
    """Check `X-Twilio-Signature` on the upgrade request when Twilio sends one (it signs
    the wss:// URL with no parameters); its absence is not proof of anything."""
    signature = socket.headers.get("x-twilio-signature")
    if signature is None or not settings.twilio_validate_signatures:
        return True
    assert settings.twilio_auth_token is not None and settings.stream_url is not None
    token = settings.twilio_auth_token.get_secret_value()
    return webhook_signature_valid(token, settings.stream_url, {}, signature)


def _refusal(start: Start, services: CallServices) -> str | None:
    """Why this stream may not become a call, or None when it may."""
    call_sid = start.start.call_sid
    parameters = start.start.custom_parameters
    try:
        check_call_sid(call_sid)  # it names log lines and files
    except TranscriptNotFound:
        return f"not a usable CallSid: {call_sid!r}"
    if services.settings.twilio_validate_signatures:
        # Inbound tokens are bound to the CallSid; outbound ones (issued before Twilio
        # assigned one) to the call's reference, and here to the CallSid it got. Both
        # vouch for the call's parameters, and open one stream only.
        subject = parameters.get("ref") or call_sid
        token = parameters.get("token")
        try:
            services.tokens.redeem(token, subject, call_sid, signed_payload(parameters))
        except InvalidToken as error:
            return str(error)
    if call_sid in services.active:
        return "a stream for this call is already open"
    if len(services.active) >= services.settings.max_concurrent_calls:
        return "too many concurrent calls"
    return None


async def _receive_start(socket: MediaStreamSocket) -> Start | None:
    """Skip `connected`; return the `start` message, or None if the socket closed."""
    while True:
        text = await socket.receive_text_message()
        if text is None:
            return None
        try:
            message = parse_message(text)
        except MessageError as error:
            socket.bad_input.drop("Twilio", error.kind, str(error))
            continue
        if isinstance(message, Start):
            return message
        if not isinstance(message, Connected):
            socket.bad_input.drop("Twilio", "message before start", _event_name(message))


class _LiveCall:
    """One call's I/O. Twilio's stream lives for the whole call; Realtime sessions come
    and go under it (reconnects after a drop or stall, rollover before the session
    lifetime limit), each re-seeded by the bridge with the conversation so far."""

    # A fixed layout: attribute reads on the audio path stay fast.
    __slots__ = (
        "_errors",
        "_loop",
        "_outage",
        "_tasks",
        "_twilio_over",
        "_watch_timer",
        "bridge",
        "metrics",
        "outcome",
        "realtime",
        "services",
        "settings",
        "socket",
    )

    def __init__(
        self, socket: MediaStreamSocket, bridge: CallBridge, services: CallServices
    ) -> None:
        self.socket = socket
        self.bridge = bridge
        self.settings = services.settings
        self.metrics = services.metrics
        self.services = services
        self.realtime: RealtimeConnection | None = None
        self.outcome = "stream_closed"
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._outage = _Outage(self._loop, services.settings.realtime_reconnect_timeout_s)
        self._errors: dict[str, int] = {}  # OpenAI error events by code
        # Done when Twilio's side is over: `stop`, the socket closed, or a failure.
        self._twilio_over: asyncio.Future[None] = self._loop.create_future()

    async def run(self) -> None:
        self.socket.listen(self._from_twilio)
        reader = asyncio.create_task(self.socket.until_closed())
        reader.add_done_callback(lambda _: self._end_twilio_side())
        outage, losses = self._outage, 0
        try:
            while not self._twilio_over.done():
                realtime = await self._connect()
                if realtime is None:
                    self._give_up()
                    break
                self.realtime = realtime
                self.bridge.session_opened()
                self._send_openai()
                try:
                    reason = await self._serve_session(realtime)
                finally:
                    self.realtime = None
                    await realtime.close()
                if reason is None:
                    break
                if reason == GIVE_UP:
                    self._give_up()
                    break
                if self.bridge.session_working:
                    outage.begin()  # reconnect at once; the clock starts now
                else:
                    outage.failed()  # it did not end the outage: back off, clock runs on
                losses += reason != "rollover"
                if losses > MAX_SESSION_LOSSES:
                    log.error("%d Realtime sessions lost in this call", losses)
                    self._give_up()
                    break
                log.warning("Realtime session lost (%s); opening a new one", reason)
                self.bridge.session_lost(reason)
        finally:
            self._log_error_counts()
            await _cancel(reader)
            for task in list(self._tasks):
                await _cancel(task)

    def wrap_up(self) -> None:
        """The server is going away: the agent says a short goodbye and the call ends
        once it has been heard, instead of being cut off mid-word."""
        self.bridge.time_limit_reached()
        self._send_openai()

    def _give_up(self) -> None:
        log.error("giving up on OpenAI Realtime; ending the call")
        self.bridge.give_up()
        self.outcome = "realtime_unavailable"

    def end(self) -> None:
        """The drain's deadline passed: hang up now, goodbye heard or not."""
        if self._twilio_over.done():
            return  # ending already
        self.bridge.pending_action = None
        self._start(self._control(CallAction("hang_up"), "drained"))

    async def _connect(self) -> RealtimeConnection | None:
        """Open a Realtime session, retrying with backoff until the outage's deadline;
        None when OpenAI stays unreachable (the caller then hears the apology, not
        silence)."""
        outage = self._outage
        while await outage.wait():
            try:
                return await connect_realtime(self.settings, outage.time_left())
            except InvalidStatus as error:
                status = error.response.status_code
                log.error("OpenAI refused the Realtime session: HTTP %d", status)
                if status in (401, 403, 404):
                    return None  # a wrong key or model does not get better by retrying
            except (OSError, TimeoutError, InvalidHandshake) as error:
                log.error("could not reach OpenAI Realtime: %s", error or type(error).__name__)
            if self.bridge.stopped:
                return None
            outage.failed()
        return None

    async def _serve_session(self, realtime: RealtimeConnection) -> str | None:
        """Bridge until the call ends (None) or the session must be replaced (the reason)."""
        replace_session: asyncio.Future[str] = self._loop.create_future()
        self._watch_later(replace_session)
        realtime.listen(self._from_openai)
        try:
            ends: set[asyncio.Future[Any]] = {self._twilio_over, realtime.closed, replace_session}
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            if self._twilio_over.done():
                if self.bridge.stopped and self.outcome == "stream_closed":
                    self.outcome = "completed"  # unless the agent ended or transferred it
                if self.outcome != "failed":
                    log.info("caller hung up" if self.bridge.stopped else "Twilio stream closed")
                await _await_transcription(self.bridge, realtime.closed)
                return None
            if replace_session.done():
                return replace_session.result()
            return f"closed with code {realtime.close_code}"
        finally:
            if self._watch_timer is not None:
                self._watch_timer.cancel()

    def _watch_session(self, replace_session: asyncio.Future[str]) -> None:
        """Every `WATCH_INTERVAL_S`: end the call at its time limit, and replace a session
        that stalled, or that is near its lifetime limit while the conversation is at a
        pause."""
        settings, bridge = self.settings, self.bridge
        try:
            if bridge.now_ms() >= settings.max_call_seconds * 1000:
                bridge.time_limit_reached()
            verdict = bridge.watch(
                settings.realtime_stall_timeout_s, settings.realtime_session_max_s
            )
            self._send_openai()
            if bridge.pending_action is not None:  # due even if Twilio sends nothing
                self._act()
            if verdict is None and not bridge.session_working and self._outage.time_left() <= 0:
                verdict = GIVE_UP
            if verdict is not None:
                replace_session.set_result(verdict)
        except Exception:
            self._fail("the session watchdog")
        if not replace_session.done():
            self._watch_later(replace_session)

    def _watch_later(self, replace_session: asyncio.Future[str]) -> None:
        """A timer, not a task, and on a grid every call shares: however many calls are
        live, their watchdogs wake the process once per interval, not once each."""
        tick = (self._loop.time() // WATCH_INTERVAL_S + 1) * WATCH_INTERVAL_S
        self._watch_timer = self._loop.call_at(tick, self._watch_session, replace_session)

    def _from_twilio(self, text: str) -> None:
        """Twilio → bridge → OpenAI, in the media socket's receive callback."""
        if self._twilio_over.done():
            return  # after `stop`
        bridge = self.bridge
        try:
            message = parse_message(text)
            if isinstance(message, UnknownEvent):
                self.socket.bad_input.drop("Twilio", "unknown event", repr(message.event))
                return
            bridge.twilio_message(message)
            if bridge.to_openai:
                self._send_openai()
            if bridge.pending_action is not None:
                self._act()
        except MessageError as error:
            self.socket.bad_input.drop("Twilio", error.kind, str(error))
        except Exception:
            self._fail("a message from Twilio")
        else:
            if bridge.stopped:
                self._end_twilio_side()

    def _from_openai(self, data: bytes) -> None:
        """OpenAI → bridge → Twilio (and back to OpenAI for truncation), in the Realtime
        socket's receive callback (which a session only makes while it is open, and so
        the call's current one)."""
        received_at = time.perf_counter()
        bridge = self.bridge
        try:
            event = parse_server_event(data)
            if event is None:
                return
            if isinstance(event, Error):
                self._openai_error(event)
            bridge.realtime_event(event)
            to_twilio = bridge.to_twilio
            if to_twilio:
                self.socket.send_now(to_twilio)
                to_twilio.clear()
            if bridge.first_audio_turn is not None:
                self._turn_answered(bridge.first_audio_turn, time.perf_counter() - received_at)
                bridge.first_audio_turn = None
            if bridge.to_openai:
                self._send_openai()
            if bridge.tool_requests:
                self._run_tools()
            if bridge.pending_action is not None:
                self._act()
        except EventError as error:
            self.socket.bad_input.drop("OpenAI", error.kind, str(error))
        except Exception:
            self._fail("an event from OpenAI")

    def _openai_error(self, event: Error) -> None:
        """Log OpenAI's error events, but a session that answers every frame with one
        (a bug on either side) must not flood the logs: the first few of each code are
        logged, the rest counted (`_log_error_counts`)."""
        error = event.error
        code = str(error.code or error.type or "unknown")[:64]
        if code not in self._errors and len(self._errors) >= MAX_ERROR_CODES:
            code = "other"
        seen = self._errors[code] = self._errors.get(code, 0) + 1
        if seen <= ERRORS_LOGGED_PER_CODE:
            log.warning(
                "OpenAI error: %s",
                error.message[:500],
                extra={"code": error.code, "type": error.type},
            )

    def _log_error_counts(self) -> None:
        counts = {code: n for code, n in self._errors.items() if n > ERRORS_LOGGED_PER_CODE}
        if counts:
            listed = ", ".join(f"{n} {code}" for code, n in counts.items())
            log.warning("OpenAI errors in this call, counted but not each logged: %s", listed)

    def _send_openai(self) -> None:
        frames = self.bridge.to_openai
        realtime = self.realtime
        if frames and realtime is not None:
            try:  # noqa: SIM105 - not a context manager object per frame
                realtime.send(*frames)
            except ConnectionClosed:
                pass  # the session's end is noticed by `_serve_session`
        frames.clear()  # written, or gone with the session they were meant for

    def _end_twilio_side(self) -> None:
        if not self._twilio_over.done():
            self._twilio_over.set_result(None)

    def _fail(self, what: str) -> None:
        """A bug met one call's data: log it and end that call, not the server's others."""
        log.exception("could not handle %s; ending the call", what)
        self.outcome = "failed"
        self._end_twilio_side()

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine beside the audio; cancelled with the call."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _run_tools(self) -> None:
        """User tools run as their own tasks: the audio keeps flowing meanwhile."""
        for request in self.bridge.tool_requests:
            self._start(self._run_tool(request))
        self.bridge.tool_requests.clear()

    async def _run_tool(self, request: ToolRequest) -> None:
        tool = self.services.tools.get(request.name)
        if tool is None:
            output = json.dumps({"error": f"there is no tool called {request.name!r}"})
        else:
            output = await run_tool(tool, request.arguments, self.settings.tool_timeout_s)
        log.info("tool %s returned", request.name, extra={"tool_call_id": request.call_id})
        self.bridge.tool_result(request.call_id, request.name, output)
        self._send_openai()

    def _act(self) -> None:
        """Carry out a hang-up or transfer once the agent's last words were heard."""
        action = self.bridge.due_action()
        if action is not None:
            self._start(self._control(action))

    async def _control(self, action: CallAction, outcome: str | None = None) -> None:
        """Hang up or transfer through Twilio's REST API, then end the stream: after a
        transfer Twilio does (`stop`), after a hang-up we do, in case Twilio's side of
        the socket is past noticing."""
        call_sid = self.bridge.transcript.call.call_sid if self.bridge.transcript else ""
        control = self.services.control
        self.outcome = outcome or ("transferred" if action.kind == "transfer" else "ended_by_agent")
        if control is None:
            log.warning("no Twilio REST credentials: ending the stream instead of %s", action.kind)
        else:
            try:
                if action.kind == "transfer":
                    number = self.settings.transfer_number or ""
                    await asyncio.to_thread(control.transfer, call_sid, number)
                    return
                await asyncio.to_thread(control.hang_up, call_sid)
            except Exception as error:
                log.error("Twilio could not %s the call: %s", action.kind.replace("_", " "), error)
        await _close(self.socket, NORMAL_CLOSURE)

    def _turn_answered(self, turn: Turn, bridge_s: float) -> None:
        turn.bridge_ms = round(bridge_s * 1000, 3)
        if turn.latency_ms is not None:
            self.metrics.turn_latency.observe(turn.latency_ms / 1000)
            log.info(
                "agent answered",
                extra={"latency_ms": turn.latency_ms, "bridge_ms": turn.bridge_ms},
            )


class _Outage:
    """The time since OpenAI last gave the call a working session, and the backoff
    between attempts to get one: the call gives up `timeout_s` after the outage began,
    however many sessions opened and died meanwhile."""

    FIRST_DELAY_S = 0.2
    MAX_DELAY_S = 2.0

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self.begin()

    def begin(self) -> None:
        """A working session was lost (or the call starts): try at once."""
        self._deadline = self._loop.time() + self._timeout_s
        self._delay = 0.0

    def failed(self) -> None:
        """An attempt failed: wait longer before the next one."""
        self._delay = min(max(self._delay * 2, self.FIRST_DELAY_S), self.MAX_DELAY_S)

    def time_left(self) -> float:
        return self._deadline - self._loop.time()

    async def wait(self) -> bool:
        """Sleep out the backoff; False when the next attempt would start past the
        deadline."""
        if self._delay >= self.time_left():
            return False
        await asyncio.sleep(self._delay)
        return True


async def drain(services: CallServices, timeout_s: float, wrap_up_s: float) -> None:
    """Stop taking calls and let the live ones finish: the last `wrap_up_s` seconds before
    `timeout_s` are the agents' cue to say goodbye. At the deadline the calls still live
    (say, their peer stopped reading) are hung up, and get `ENDING_TIMEOUT_S` to save
    their transcripts. Returns when no call is left, or after that."""
    services.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    log.warning("draining: %d live calls, at most %.0f s", len(services.active), timeout_s)
    wrapped_up = False
    while services.active and loop.time() < deadline:
        if not wrapped_up and loop.time() >= deadline - wrap_up_s:
            wrapped_up = True
            for call in list(services.active.values()):
                call.wrap_up()
        await asyncio.sleep(0.1)
    if services.active:
        log.warning("drain deadline: hanging up %d calls", len(services.active))
        for call in list(services.active.values()):
            call.end()
        deadline = loop.time() + ENDING_TIMEOUT_S
        while services.active and loop.time() < deadline:  # noqa: ASYNC110 - as above
            await asyncio.sleep(0.1)
    log.warning("drained; %d calls were still live", len(services.active))


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _await_transcription(bridge: CallBridge, session_closed: asyncio.Future[None]) -> None:
    """Give the last caller turn's transcription a moment to arrive before closing."""
    transcript = bridge.transcript
    deadline = asyncio.get_running_loop().time() + TRANSCRIPTION_GRACE_S
    while (  # noqa: ASYNC110 - the bridge is sans-I/O: it has no event to await
        transcript is not None
        and transcript.untranscribed_caller_turns
        and not session_closed.done()
        and asyncio.get_running_loop().time() < deadline
    ):
        await asyncio.sleep(0.05)


async def _close(socket: WebSocket[Any, Any, Any], code: int) -> None:
    if socket.connection_state != "disconnect":
        with contextlib.suppress(Exception):
            await socket.close(code)


async def _finish(bridge: CallBridge, services: CallServices, outcome: str) -> None:
    """Count the call and save its transcript (off the event loop)."""
    transcript = bridge.transcript
    if transcript is None:
        return
    record = transcript.to_record(ended_at=datetime.now(UTC))
    record["outcome"] = outcome
    record["cost"] = cost_record(
        bridge.config.model, transcript.usage, services.settings.model_prices
    )
    services.metrics.call_finished(
        outcome, transcript, bridge.frames_in, bridge.frames_out, record["cost"]["estimated_usd"]
    )
    try:
        where = await asyncio.to_thread(services.store.save, record)
    except Exception:
        log.exception("could not save the transcript")
        return
    log.info(
        "call ended; transcript saved",
        extra={
            "outcome": outcome,
            "turns": len(record["turns"]),
            "duration_s": record["duration_s"],
            "cost_usd": record["cost"]["estimated_usd"],
            "to": where,
        },
    )


def _event_name(message: object) -> str:
    return message.event if isinstance(message, UnknownEvent) else type(message).__name__.lower()
