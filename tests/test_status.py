"""Twilio's status and machine-detection callbacks end up in the call's transcript,
whichever comes first: the callback or the end of the stream (local store)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx

from app.main import create_app
from app.settings import Settings
from app.simulator import new_sid
from app.storage.local import LocalTranscriptStore
from tests.conftest import ACCOUNT
from tests.doubles.realtime import RealtimeDouble
from tests.doubles.twilio_rest import FakeTwilioRest
from tests.s3 import record
from tests.servers import RunningServer, serve
from tests.test_call_end_to_end import call
from tests.twilio import post_webhook

VOICEMAIL = "Hi, this is Bella's returning your call. Please call us back."


def completed(call_sid: str, **extra: str) -> dict[str, str]:
    return {
        "CallSid": call_sid,
        "AccountSid": ACCOUNT,
        "CallStatus": "completed",
        "CallDuration": "42",
        "Timestamp": "Sat, 14 Mar 2026 09:27:40 +0000",
        **extra,
    }


def transcript_of(settings: Settings, call_sid: str) -> dict[str, Any] | None:
    paths = list(Path(settings.transcripts_dir).glob(f"*/*/*/{call_sid}.json"))
    return dict(json.loads(paths[0].read_text())) if paths else None


async def finished_call(server: RunningServer, realtime: RealtimeDouble) -> str:
    async with await call(server) as caller:
        await realtime.wait_for(lambda: realtime.sessions, timeout=5)
        await caller.hang_up()
    return caller.call_sid


EXPECTED = {"status": "completed", "duration_s": 42, "at": "2026-03-14T09:27:40+00:00"}


async def test_status_before_the_stream_ends_lands_in_the_transcript(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(agent_greeting="")
    async with serve(create_app(settings)) as server:
        async with await call(server) as caller:
            await realtime.wait_for(lambda: realtime.sessions, timeout=5)
            response = await post_webhook(server, "/twilio/status", completed(caller.call_sid))
            assert response.status_code == 204
            await caller.hang_up()
        record = await realtime.wait_for(lambda: transcript_of(settings, caller.call_sid))
    assert record["call_status"] == EXPECTED
    assert (
        "Twilio: completed · 42 s"
        in next(Path(settings.transcripts_dir).rglob(f"{caller.call_sid}.txt")).read_text()
    )
    assert not list(Path(settings.transcripts_dir).glob("status/*.json")), "note left behind"


async def test_status_after_the_stream_ended_is_merged_into_the_transcript(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(agent_greeting="")
    async with serve(create_app(settings)) as server:
        call_sid = await finished_call(server, realtime)
        before = await realtime.wait_for(lambda: transcript_of(settings, call_sid))
        ringing = {**completed(call_sid), "CallStatus": "ringing"}
        assert (await post_webhook(server, "/twilio/status", ringing)).status_code == 204
        response = await post_webhook(
            server, "/twilio/status", completed(call_sid, AnsweredBy="human")
        )
        assert response.status_code == 204
    record = transcript_of(settings, call_sid)
    assert record is not None
    assert record["call_status"] == {**EXPECTED, "answered_by": "human"}
    assert record["turns"] == before["turns"]


async def test_an_unsigned_status_callback_is_refused(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    call_sid = new_sid("CA")
    async with serve(create_app(settings)) as server, httpx.AsyncClient() as client:
        response = await client.post(f"{server.http_url}/twilio/status", data=completed(call_sid))
        forged = await post_webhook(server, "/twilio/status", completed(call_sid), token="x" * 32)
    assert response.status_code == 403
    assert forged.status_code == 403
    assert not Path(settings.transcripts_dir).exists() or not list(
        Path(settings.transcripts_dir).rglob("*.json")
    )


def test_local_store_notes_then_folds_status_into_the_saved_transcript(tmp_path: Path) -> None:
    store = LocalTranscriptStore(tmp_path)
    transcript = record()
    store.record_call_status(transcript["call_sid"], {"answered_by": "machine_end_beep"})
    store.record_call_status(transcript["call_sid"], {"status": "completed"})
    assert (tmp_path / "status" / f"{transcript['call_sid']}.json").is_file()
    store.save(transcript)
    assert store.get(transcript["call_sid"])["call_status"] == {
        "answered_by": "machine_end_beep",
        "status": "completed",
    }
    assert not (tmp_path / "status" / f"{transcript['call_sid']}.json").exists()


# --- answering machines ---


async def amd(server: RunningServer, call_sid: str, answered_by: str) -> None:
    params = {"CallSid": call_sid, "AccountSid": ACCOUNT, "AnsweredBy": answered_by}
    response = await post_webhook(server, "/twilio/amd", params)
    assert response.status_code == 204


async def test_a_machine_gets_the_voicemail_message_and_the_transcript_says_so(
    realtime: RealtimeDouble,
    settings_with_rest: Callable[..., Settings],
    twilio_rest: FakeTwilioRest,
) -> None:
    settings = settings_with_rest(machine_detection=True, voicemail_message=VOICEMAIL)
    async with serve(create_app(settings)) as server:
        async with await call(server) as caller:
            twilio_rest.add_call(caller.call_sid)
            await realtime.wait_for(lambda: realtime.sessions, timeout=5)
            await amd(server, caller.call_sid, "machine_end_beep")
            await caller.hang_up()  # Twilio's stop after the redirect
        record = await realtime.wait_for(lambda: transcript_of(settings, caller.call_sid))
    (redirect,) = twilio_rest.requests_to("POST", f"/Calls/{caller.call_sid}.json")
    response = ElementTree.fromstring(redirect.form["Twiml"])
    assert [(element.tag, element.text) for element in response] == [
        ("Say", VOICEMAIL),
        ("Hangup", None),
    ]
    assert record["call_status"] == {"answered_by": "machine_end_beep", "voicemail_left": True}


async def test_a_fax_is_hung_up_on(
    realtime: RealtimeDouble,
    settings_with_rest: Callable[..., Settings],
    twilio_rest: FakeTwilioRest,
) -> None:
    settings = settings_with_rest(machine_detection=True, voicemail_message=VOICEMAIL)
    async with serve(create_app(settings)) as server:
        call_sid = await finished_call(server, realtime)
        twilio_rest.add_call(call_sid)
        await realtime.wait_for(lambda: transcript_of(settings, call_sid))
        await amd(server, call_sid, "fax")
    (hang_up,) = twilio_rest.requests_to("POST", f"/Calls/{call_sid}.json")
    assert hang_up.form == {"Status": "completed"}
    record = transcript_of(settings, call_sid)
    assert record is not None
    assert record["call_status"] == {"answered_by": "fax", "voicemail_left": False}


async def test_a_human_is_only_noted(
    realtime: RealtimeDouble,
    settings_with_rest: Callable[..., Settings],
    twilio_rest: FakeTwilioRest,
) -> None:
    settings = settings_with_rest(machine_detection=True, voicemail_message=VOICEMAIL)
    async with serve(create_app(settings)) as server:
        call_sid = new_sid("CA")
        twilio_rest.add_call(call_sid)
        await amd(server, call_sid, "human")
    assert twilio_rest.requests_to("POST", "/Calls/") == []
    note = json.loads((Path(settings.transcripts_dir) / "status" / f"{call_sid}.json").read_text())
    assert note["call_status"] == {"answered_by": "human"}
