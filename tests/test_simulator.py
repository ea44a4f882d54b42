"""The Twilio caller simulator, tested against a tiny in-test server playing the bridge role.

The end-to-end tests trust the simulator to behave like Twilio (real-time pacing, playback,
mark and clear semantics), so those behaviours are pinned here first. Timing assertions use
generous tolerances: they check the model, not the scheduler.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.fixtures import TEXTS, load
from voicebridge.audio import (
    read_audio_as_ulaw,
    read_wav_as_ulaw,
    ulaw_to_pcm16,
    write_ulaw_wav,
)
from voicebridge.simulator import (
    TWILIO_BINARY_MESSAGE,
    TWILIO_INVALID_MESSAGE,
    CallEndedError,
    CallerSimulator,
    run_simulation,
)
from voicebridge.ulaw import BYTES_PER_MS, FRAME_BYTES, SILENCE_BYTE, silence

AGENT = load("agent_long_reply")
CALLER = load("caller_book_table")


def ms(n: int, audio: bytes = AGENT) -> bytes:
    """The first ``n`` ms of ``audio``."""
    return audio[: n * BYTES_PER_MS]


class FakeBridge:
    """The server side of the stream: records what the 'caller' sends, sends what we say."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.conn: ServerConnection | None = None
        self.connected = asyncio.Event()
        self.done = asyncio.Event()
        self.on_message: Callable[[FakeBridge, dict[str, Any]], Awaitable[None]] | None = None
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        self.conn = ws
        self.connected.set()
        try:
            async for raw in ws:
                msg = json.loads(raw)
                self.messages.append((time.monotonic(), msg))
                if self.on_message is not None:
                    await self.on_message(self, msg)
        except ConnectionClosed:
            pass
        finally:
            self.done.set()

    @property
    def stream_sid(self) -> str:
        return str(self.events("start")[0]["streamSid"])

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m for _, m in self.messages if m.get("event") == name]

    def timed(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.messages if m.get("event") == name]

    async def send(self, msg: dict[str, Any] | str | bytes) -> float:
        assert self.conn is not None
        sent_at = time.monotonic()
        await self.conn.send(msg if isinstance(msg, str | bytes) else json.dumps(msg))
        return sent_at

    async def send_media(self, audio: bytes) -> float:
        payload = base64.b64encode(audio).decode()
        return await self.send(
            {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
        )

    async def send_mark(self, name: str) -> float:
        return await self.send(
            {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}
        )

    async def send_clear(self) -> float:
        return await self.send({"event": "clear", "streamSid": self.stream_sid})

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)

    async def wait_started(self) -> None:
        await self.wait_for(lambda: bool(self.events("start")))


@pytest.fixture
async def bridge() -> AsyncIterator[FakeBridge]:
    fake = FakeBridge()
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        fake.url = f"ws://127.0.0.1:{port}/media-stream"
        yield fake


# --------------------------------------------------------------------------- caller → server


async def test_connected_start_and_paced_media(bridge: FakeBridge) -> None:
    async with CallerSimulator(
        bridge.url, custom_parameters={"token": "t0k", "from": "+15550001111"}
    ) as sim:
        await bridge.wait_for(lambda: len(bridge.events("media")) >= 45)
        t_start = bridge.timed("start")[0][0]

    connected, start = bridge.messages[0][1], bridge.messages[1][1]
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start == {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": sim.stream_sid,
        "start": {
            "accountSid": sim.account_sid,
            "streamSid": sim.stream_sid,
            "callSid": sim.call_sid,
            "tracks": ["inbound"],
            "customParameters": {"token": "t0k", "from": "+15550001111"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    for sid, prefix in ((sim.call_sid, "CA"), (sim.stream_sid, "MZ"), (sim.account_sid, "AC")):
        assert len(sid) == 34 and sid.startswith(prefix)

    media = bridge.timed("media")
    for i, (_, m) in enumerate(media):
        assert set(m) == {"event", "sequenceNumber", "streamSid", "media"}
        assert m["sequenceNumber"] == str(i + 2)  # strings, after start's "1"
        assert m["streamSid"] == sim.stream_sid
        assert m["media"]["track"] == "inbound"
        assert m["media"]["chunk"] == str(i + 1)
        assert m["media"]["timestamp"] == str(i * 20)
        assert base64.b64decode(m["media"]["payload"]) == bytes([SILENCE_BYTE]) * FRAME_BYTES

    # ~50 frames per second of wall-clock time, and no drift against the absolute clock.
    window = [t for t, _ in media if t_start + 0.1 <= t < t_start + 0.8]
    assert 32 <= len(window) <= 38
    last_t, last = media[-1]
    lag_ms = (last_t - t_start) * 1000 - (int(last["media"]["timestamp"]) + 20)
    assert -10 <= lag_ms <= 60

    stop = bridge.events("stop")
    assert stop == [
        {
            "event": "stop",
            "sequenceNumber": str(len(media) + 2),
            "streamSid": sim.stream_sid,
            "stop": {"accountSid": sim.account_sid, "callSid": sim.call_sid},
        }
    ]
    assert sim.closed_by == "caller" and sim.close_code == 1000


async def test_say_sends_audio_in_real_time_and_in_order(bridge: FakeBridge) -> None:
    speech = ms(300, CALLER) + b"\x10" * 3  # not a whole number of frames
    async with CallerSimulator(bridge.url) as sim:
        await bridge.wait_started()
        t0 = time.monotonic()
        done_at = await sim.say(speech)
        took = done_at - t0
        await sim.pause(0.06)

    assert 0.28 <= took <= 0.45  # 300 ms of audio takes ~300 ms to send
    stream = b"".join(base64.b64decode(m["media"]["payload"]) for m in bridge.events("media"))
    pos = stream.index(speech[:FRAME_BYTES])
    assert pos % FRAME_BYTES == 0  # speech starts on a frame boundary
    assert stream[pos : pos + len(speech)] == speech
    tail = stream[pos + len(speech) : pos + len(speech) + 200]
    assert tail == bytes([SILENCE_BYTE]) * len(tail)  # padded with silence, then silence
    assert sim.speech_frames_sent == -(-len(speech) // FRAME_BYTES)
    assert sim.last_speech_sent_at == done_at


async def test_send_silence_false_leaves_timestamp_gaps(bridge: FakeBridge) -> None:
    async with CallerSimulator(bridge.url, send_silence=False) as sim:
        await bridge.wait_started()
        await sim.say(ms(100, CALLER))
        await sim.pause(0.2)
        await sim.say(ms(100, CALLER))

    stamps = [int(m["media"]["timestamp"]) for m in bridge.events("media")]
    chunks = [int(m["media"]["chunk"]) for m in bridge.events("media")]
    assert len(stamps) == 10  # speech only
    assert chunks == list(range(1, 11))
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert gaps.count(20) == 8
    assert max(gaps) >= 200


# --------------------------------------------------------------------------- server → caller


async def test_mark_is_echoed_only_after_the_audio_has_played(bridge: FakeBridge) -> None:
    async with CallerSimulator(bridge.url) as sim:
        await bridge.wait_started()
        sent_at = await bridge.send_media(ms(200))
        await bridge.send_media(ms(200)[::-1])  # audio can arrive in several messages
        await bridge.send_mark("reply-1")
        await bridge.wait_for(lambda: bool(bridge.events("mark")))
        echoed_at, echo = bridge.timed("mark")[0]
        await sim.wait_until_agent_quiet(2, quiet_s=0.05)

        # A mark with nothing queued before it comes straight back.
        t = await bridge.send_mark("idle")
        await bridge.wait_for(lambda: len(bridge.events("mark")) == 2)
        assert bridge.timed("mark")[1][0] - t < 0.05

    assert echo == {
        "event": "mark",
        "sequenceNumber": echo["sequenceNumber"],
        "streamSid": sim.stream_sid,
        "mark": {"name": "reply-1"},
    }
    assert echo["sequenceNumber"].isdigit()
    assert 0.4 <= echoed_at - sent_at <= 0.5  # 400 ms of audio, never before it played
    assert bytes(sim.heard) == ms(200) + ms(200)[::-1]
    assert [(m.name, m.cleared) for m in sim.marks_echoed] == [("reply-1", False), ("idle", False)]
    [utt] = sim.utterances
    assert utt.played_ms == 400 and not utt.interrupted and utt.ended_by == "drained"
    assert utt.end is not None and 0.38 <= utt.end - utt.start <= 0.42
    assert sim.first_audio_at == utt.start
    assert sim.violations == []


async def test_clear_drops_queued_audio_and_echoes_pending_marks(bridge: FakeBridge) -> None:
    async with CallerSimulator(bridge.url) as sim:
        await bridge.wait_started()
        first_at = await bridge.send_media(ms(1500))
        await bridge.send_mark("a")
        await bridge.send_media(ms(500))
        await bridge.send_mark("b")
        await sim.wait_for_agent_audio(1)
        await asyncio.sleep(0.4)
        clear_at = await bridge.send_clear()
        await bridge.wait_for(lambda: len(bridge.events("mark")) == 2)
        echo_times = [t for t, _ in bridge.timed("mark")]

        # Playback resumes with the next audio, as a new utterance.
        await bridge.send_media(ms(100))
        await sim.wait_for_agent_audio(1)
        await sim.wait_until_agent_quiet(2, quiet_s=0.05)

    assert [m["mark"]["name"] for m in bridge.events("mark")] == ["a", "b"]
    assert all(t - clear_at < 0.1 for t in echo_times)  # at once, not after 2 s of audio
    assert [(m.name, m.cleared) for m in sim.marks_echoed] == [("a", True), ("b", True)]

    [clear] = sim.clears
    played_ms = (clear_at - first_at) * 1000
    assert abs(clear.utterance_played_ms - played_ms) <= 60
    assert clear.was_playing and clear.marks_flushed == ("a", "b")
    assert 1999 <= clear.utterance_played_ms + clear.dropped_ms <= 2000  # whole ms, rounded down

    first, second = sim.utterances
    assert first.interrupted and first.ended_by == "clear"
    assert first.played_ms == clear.utterance_played_ms
    assert second.played_ms == 100 and not second.interrupted
    cut = len(sim.heard) - 100 * BYTES_PER_MS  # bytes of the first reply actually played
    assert cut // BYTES_PER_MS == clear.utterance_played_ms
    assert bytes(sim.heard) == AGENT[:cut] + ms(100)
    assert sim.violations == []


async def test_brief_underrun_is_one_utterance(bridge: FakeBridge) -> None:
    async with CallerSimulator(bridge.url, utterance_gap_s=0.2) as sim:
        await bridge.wait_started()
        await bridge.send_media(ms(100))
        await asyncio.sleep(0.15)  # dry for ~50 ms
        await bridge.send_media(ms(100))
        await sim.wait_until_agent_quiet(2, quiet_s=0.3)  # then a real pause
        await bridge.send_media(ms(100))
        await sim.wait_for_agent_audio(1)  # else "quiet" may be true before it arrives
        await sim.wait_until_agent_quiet(2, quiet_s=0.05)

    assert [u.played_ms for u in sim.utterances] == [200, 100]


async def test_unknown_events_and_fields_are_violations(bridge: FakeBridge) -> None:
    async with CallerSimulator(bridge.url) as sim:
        await bridge.wait_started()
        sid = bridge.stream_sid
        payload = base64.b64encode(ms(100)).decode()
        extra = {"sequenceNumber": "1"}
        await bridge.send(
            {"event": "media", "streamSid": sid, "media": {"payload": payload}} | extra
        )
        await bridge.send(
            {"event": "media", "streamSid": sid, "media": {"payload": payload, "track": "x"}}
        )
        await bridge.send({"event": "transcript", "streamSid": sid, "text": "hi"})
        await bridge.send({"event": "clear", "streamSid": "MZ" + "0" * 32})
        await bridge.send({"event": "media", "streamSid": sid, "media": {"payload": "%%%"}})
        await bridge.send(b"\x00\x01")
        await bridge.send("not json")
        await asyncio.sleep(0.05)

    codes = [v.code for v in sim.violations]
    assert codes == [TWILIO_INVALID_MESSAGE] * 5 + [TWILIO_BINARY_MESSAGE, TWILIO_INVALID_MESSAGE]
    assert "sequenceNumber" in str(sim.violations[0])
    assert "track" in str(sim.violations[1])
    assert "transcript" in sim.violations[2].message
    assert sim.heard == b"" and sim.utterances == []  # Twilio ignores invalid messages
    assert len(sim.received) == 5  # the JSON objects, valid or not


# --------------------------------------------------------------------------- call lifecycle


async def test_server_close_ends_the_call(bridge: FakeBridge) -> None:
    async with CallerSimulator(bridge.url) as sim:
        await bridge.wait_started()
        await bridge.send_media(ms(1000))
        await sim.wait_for_agent_audio(1)
        speech = sim.enqueue_speech(ms(1000, CALLER))
        assert bridge.conn is not None
        await bridge.conn.close(4000, "bye")
        assert await sim.wait_closed(2) == 4000
        with pytest.raises(CallEndedError):
            await speech
        with pytest.raises(CallEndedError):
            await sim.say(ms(100, CALLER))
        with pytest.raises(CallEndedError):
            await sim.wait_for_agent_audio(1)
        await sim.wait_until_agent_quiet(1)  # an ended call is quiet

    assert sim.closed_by == "server" and sim.close_reason == "bye"
    assert 800 <= sim.dropped_at_close_ms < 1000  # unplayed audio is lost with the stream
    assert sim.utterances[0].ended_by == "close" and not sim.utterances[0].interrupted
    assert bridge.events("stop") == []  # Twilio doesn't send stop when the server hangs up


async def test_wait_for_agent_audio_times_out_without_audio(bridge: FakeBridge) -> None:
    async with CallerSimulator(bridge.url) as sim:
        with pytest.raises(TimeoutError):
            await sim.wait_for_agent_audio(0.1)
        await sim.wait_until_agent_quiet(1, quiet_s=0.05)


async def test_run_simulation_greeting_question_reply(bridge: FakeBridge, tmp_path: Path) -> None:
    greeting, reply = ms(200), ms(300)[::-1]
    state = {"speech": 0, "replied": False}

    async def role(b: FakeBridge, msg: dict[str, Any]) -> None:
        # A crude VAD: reply after the caller's speech is followed by 100 ms of silence.
        if msg["event"] == "start":
            await b.send_media(greeting)
        elif msg["event"] == "media" and not state["replied"]:
            frame = base64.b64decode(msg["media"]["payload"])
            if frame != bytes([SILENCE_BYTE]) * FRAME_BYTES:
                state["speech"] = 1
            elif state["speech"]:
                state["speech"] += 1
                if state["speech"] > 5:
                    state["replied"] = True
                    await b.send_media(reply)
                    await b.send_mark("reply")

    bridge.on_message = role
    wav_in, wav_out = tmp_path / "in.wav", tmp_path / "out.wav"
    write_ulaw_wav(wav_in, ms(200, CALLER))
    summary = await run_simulation(
        bridge.url,
        read_audio_as_ulaw(wav_in),
        wav_out,
        parameters={"k": "v"},
        greeting_timeout=1,
        reply_timeout=3,
        quiet_s=0.2,
    )

    assert summary.violations == ()
    assert (summary.greeting_ms, summary.reply_ms, summary.heard_ms) == (200, 300, 500)
    assert summary.utterances == 2 and summary.interruptions == 0
    assert summary.reply_latency_ms is not None and 80 <= summary.reply_latency_ms <= 300
    assert summary.closed_by == "caller"
    assert bridge.events("start")[0]["start"]["customParameters"] == {"k": "v"}
    assert [m["mark"]["name"] for m in bridge.events("mark")] == ["reply"]
    assert bridge.events("stop")
    with wave.open(str(wav_out)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        assert w.readframes(w.getnframes()) == ulaw_to_pcm16(greeting + reply)


# --------------------------------------------------------------------------- audio helpers


def test_fixtures_are_small_ulaw_with_texts() -> None:
    for name in TEXTS:
        audio = load(name)
        assert 8000 < len(audio) < 60_000  # 1-7.5 s of 8 kHz μ-law
        assert audio.count(SILENCE_BYTE) < len(audio) // 2  # speech, not silence


def test_wav_round_trip_and_conversion(tmp_path: Path) -> None:
    audio = ms(500, CALLER)
    pcm_wav, ulaw_wav = tmp_path / "a.wav", tmp_path / "b.wav"
    write_ulaw_wav(pcm_wav, audio)
    write_ulaw_wav(ulaw_wav, audio, encoding="ulaw")
    assert read_wav_as_ulaw(ulaw_wav) == audio  # bit-exact when already μ-law 8 kHz mono
    assert read_wav_as_ulaw(pcm_wav) == audio  # μ-law → 16-bit → μ-law is lossless

    # 16 kHz stereo 16-bit: resampled and mixed down to ~the same duration.
    pcm8k = ulaw_to_pcm16(audio)
    stereo16k = b"".join(pcm8k[i : i + 2] * 4 for i in range(0, len(pcm8k), 2))
    path = tmp_path / "c.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(stereo16k)
    converted = read_wav_as_ulaw(path)
    assert abs(len(converted) - len(audio)) <= 2

    raw = tmp_path / "d.ulaw"
    raw.write_bytes(audio)
    assert read_audio_as_ulaw(raw) == audio
    assert silence(20) == bytes([SILENCE_BYTE]) * FRAME_BYTES
