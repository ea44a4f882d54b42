"""The number's voice webhook through the real twilio SDK, against the fake Twilio API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twilio.base.exceptions import TwilioRestException

from tests.doubles.twilio_rest import FakeTwilioRest
from voicebridge.telephony.rest import (
    TwilioAccountError,
    TwilioNumber,
    VoiceWebhook,
    create_client,
    voice_webhook_url,
)

NUMBER = "+15551230000"
OLD_URL = "https://old.example.com/voice"


@pytest.fixture
def twilio() -> Iterator[FakeTwilioRest]:
    with FakeTwilioRest() as fake:
        fake.add_number(NUMBER, voice_url=OLD_URL, voice_method="GET")
        fake.add_number("+15551239999")
        yield fake


def test_point_then_restore(twilio: FakeTwilioRest) -> None:
    number = TwilioNumber(twilio.client(), NUMBER)

    previous = number.point_number("https://abc.ngrok-free.app/twilio/voice")

    assert previous == VoiceWebhook(OLD_URL, "GET")
    resource = twilio.number(NUMBER)
    assert resource["voice_url"] == "https://abc.ngrok-free.app/twilio/voice"
    assert resource["voice_method"] == "POST"
    (update,) = twilio.requests_to("POST", "/IncomingPhoneNumbers/")
    assert update.form["VoiceUrl"] == "https://abc.ngrok-free.app/twilio/voice"
    assert update.authorized

    number.restore(previous)

    resource = twilio.number(NUMBER)
    assert (resource["voice_url"], resource["voice_method"]) == (OLD_URL, "GET")


def test_a_twiml_app_is_cleared_while_pointed_and_put_back(twilio: FakeTwilioRest) -> None:
    twilio.add_number("+15551234444", voice_application_sid="AP" + "1" * 32, voice_url="")
    number = TwilioNumber(twilio.client(), "+15551234444")

    previous = number.point_number("https://abc.ngrok-free.app/twilio/voice")
    assert twilio.number("+15551234444")["voice_application_sid"] == ""
    assert str(previous) == f"TwiML App AP{'1' * 32}"

    number.restore(previous)
    assert twilio.number("+15551234444")["voice_application_sid"] == "AP" + "1" * 32
    assert twilio.number("+15551234444")["voice_url"] == ""


def test_unknown_number_lists_the_accounts_numbers(twilio: FakeTwilioRest) -> None:
    with pytest.raises(TwilioAccountError) as caught:
        TwilioNumber(twilio.client(), "+15550000000").point_number("https://x.example/twilio/voice")
    message = str(caught.value)
    assert "+15550000000 is not a number of account" in message
    assert f"its numbers: {NUMBER}, +15551239999" in message
    assert twilio.requests_to("POST", "") == []


def test_an_account_without_numbers_says_so() -> None:
    with FakeTwilioRest() as empty, pytest.raises(TwilioAccountError, match="which has none yet"):
        TwilioNumber(empty.client(), NUMBER).current()


def test_bad_credentials_are_readable_and_never_echo_the_token(twilio: FakeTwilioRest) -> None:
    with pytest.raises(TwilioAccountError) as caught:
        TwilioNumber(twilio.client("wrong-token-123"), NUMBER).point_number("https://x.example")
    assert "rejected the credentials" in str(caught.value)
    assert "TWILIO_AUTH_TOKEN" in str(caught.value)
    assert "wrong-token-123" not in str(caught.value)
    assert twilio.requests[-1].authorized is False


def test_an_unreachable_api_is_one_sentence() -> None:
    with FakeTwilioRest() as gone:
        client = create_client(gone.account_sid, gone.auth_token, api_base_url=gone.base_url)
    with pytest.raises(TwilioAccountError, match=r"^cannot reach the Twilio API \(.+\)$"):
        TwilioNumber(client, NUMBER).current()


def test_an_invalid_webhook_is_twilios_words(twilio: FakeTwilioRest) -> None:
    with pytest.raises(TwilioAccountError, match="code 21502"):
        TwilioNumber(twilio.client(), NUMBER).point_number("ftp://nope")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://app.fly.dev", "https://app.fly.dev/twilio/voice"),
        ("https://app.fly.dev/", "https://app.fly.dev/twilio/voice"),
        ("https://app.fly.dev/custom/path", "https://app.fly.dev/custom/path"),
    ],
)
def test_voice_webhook_url(given: str, expected: str) -> None:
    assert voice_webhook_url(given) == expected


def test_voice_webhook_url_refuses_what_is_not_http() -> None:
    with pytest.raises(ValueError, match="not an http"):
        voice_webhook_url("app.fly.dev")


def test_the_fake_creates_redirects_and_hangs_up_calls(twilio: FakeTwilioRest) -> None:
    """What outbound calls and hang-ups will rely on."""
    client = twilio.client()
    call = client.calls.create(
        to="+15550001111",
        from_=NUMBER,
        url="https://abc.ngrok-free.app/twilio/voice",
        status_callback="https://abc.ngrok-free.app/twilio/status",
        status_callback_event=["initiated", "completed"],
    )
    assert call.sid.startswith("CA")
    assert call.status == "queued"
    assert call.direction == "outbound-api"
    (created,) = twilio.requests_to("POST", "/Calls.json")
    assert created.values("StatusCallbackEvent") == ["initiated", "completed"]

    client.calls(call.sid).update(twiml="<Response><Hangup/></Response>")
    ended = client.calls(call.sid).update(status="completed")
    assert ended.status == "completed"
    assert twilio.calls[call.sid]["status"] == "completed"

    twilio.forget_call(call.sid)
    with pytest.raises(TwilioRestException) as caught:
        client.calls(call.sid).update(status="completed")
    assert (caught.value.status, caught.value.code) == (404, 20404)


def test_the_fake_refuses_a_call_without_instructions(twilio: FakeTwilioRest) -> None:
    with pytest.raises(TwilioRestException) as caught:
        twilio.client().calls.create(to="+15550001111", from_=NUMBER)
    assert caught.value.code == 21205


def test_the_fake_pages_long_lists(twilio: FakeTwilioRest) -> None:
    for n in range(5):
        twilio.add_number(f"+1555000000{n}")
    numbers = twilio.client().incoming_phone_numbers.list(page_size=2)
    assert len(numbers) == 7
    assert len(twilio.requests_to("GET", "IncomingPhoneNumbers.json")) == 4
