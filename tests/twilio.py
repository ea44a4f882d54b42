"""What Twilio does before a media stream: the signed voice webhook, and its TwiML."""

from __future__ import annotations

import asyncio

import httpx
from twilio.request_validator import RequestValidator

from tests.conftest import AUTH_TOKEN, PUBLIC_BASE_URL
from tests.servers import RunningServer
from voicebridge.simulator import ring


def signature(url: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params))


async def post_webhook(
    server: RunningServer, path: str, params: dict[str, str], *, token: str = AUTH_TOKEN
) -> httpx.Response:
    """POST a webhook signed as Twilio signs it: over the public URL, not the one we hit."""
    headers = {"X-Twilio-Signature": signature(f"{PUBLIC_BASE_URL}{path}", params, token)}
    async with httpx.AsyncClient() as client:
        return await client.post(f"{server.http_url}{path}", data=params, headers=headers)


async def answer_call(
    server: RunningServer,
    call_sid: str,
    *,
    caller: str = "+15550001111",
    called: str = "+15550002222",
    token: str = AUTH_TOKEN,
) -> dict[str, str]:
    """Ring the voice webhook like Twilio; return the `<Parameter>`s of the stream it opens."""
    return await asyncio.to_thread(
        ring,
        server.http_url,
        call_sid=call_sid,
        caller=caller,
        called=called,
        auth_token=token,
        public_base_url=PUBLIC_BASE_URL,
    )
