"""Shared fixtures: the Realtime double, settings pointing at it, the app in uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.realtime import AgentLine, RealtimeDouble
from tests.doubles.twilio_rest import FakeTwilioRest
from tests.fixtures import audio
from voicebridge.settings import Settings, load_settings

PUBLIC_BASE_URL = "https://voice.example.com"
AUTH_TOKEN = "twilio-test-auth-token"
ACCOUNT = "AC" + "1" * 32
OUR_NUMBER = "+15550009999"


def agent_line(name: str) -> AgentLine:
    return AgentLine(text=audio.text(name), audio=audio.load(name))


@pytest.fixture
async def realtime() -> AsyncIterator[RealtimeDouble]:
    """The Realtime API double: greeting, then a long reply, then a short one."""
    double = RealtimeDouble(
        agent_lines=[
            agent_line("agent_greeting"),
            agent_line("agent_long_reply"),
            agent_line("agent_short_reply"),
        ],
        caller_transcripts=[audio.text("caller_book_table"), audio.text("caller_interrupt")],
    )
    async with double:
        yield double
    assert double.violations == [], "the bridge sent events the GA API would reject"
    assert double.internal_errors == []


@pytest.fixture
def twilio_rest() -> Iterator[FakeTwilioRest]:
    """Twilio's REST API on loopback, for the real twilio SDK to talk to."""
    with FakeTwilioRest(account_sid=ACCOUNT, auth_token=AUTH_TOKEN) as fake:
        yield fake
    assert fake.errors == []


@pytest.fixture
def make_settings(realtime: RealtimeDouble, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "openai_api_key": "sk-test-key",
            "twilio_auth_token": AUTH_TOKEN,
            "openai_realtime_url": realtime.url,
            "public_base_url": PUBLIC_BASE_URL,
            "transcripts_dir": tmp_path / "transcripts",
            "agent_greeting": "Hello, thanks for calling Bella's.",
            "_env_file": None,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def settings_with_rest(
    make_settings: Callable[..., Settings], twilio_rest: FakeTwilioRest
) -> Callable[..., Settings]:
    """Settings whose Twilio REST calls (hang-ups, transfers, outbound) reach the fake."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "twilio_account_sid": ACCOUNT,
            "twilio_api_base_url": twilio_rest.base_url,
            "twilio_phone_number": OUR_NUMBER,
            "agent_greeting": "",
            **overrides,
        }
        return make_settings(**values)

    return make
