"""The Realtime session configuration a call uses (GA `session.update`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voicebridge.realtime.events import encode
from voicebridge.settings import Settings


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What shapes one call's agent; per call so outbound calls can override it."""

    model: str
    instructions: str
    voice: str
    greeting: str
    transcription_model: str
    vad_threshold: float = 0.5
    vad_silence_ms: int = 500
    tools: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_settings(
        cls, settings: Settings, tools: tuple[dict[str, Any], ...] = ()
    ) -> AgentConfig:
        return cls(
            tools=tools,
            model=settings.openai_realtime_model,
            instructions=settings.instructions,
            voice=settings.agent_voice,
            greeting=settings.agent_greeting,
            transcription_model=settings.transcription_model,
            vad_threshold=settings.vad_threshold,
            vad_silence_ms=settings.vad_silence_ms,
        )


def session_update(config: AgentConfig) -> str:
    """μ-law in and out (`audio/pcmu`), so no transcoding happens anywhere.

    Server VAD with `interrupt_response` lets the model stop generating the moment the
    caller talks; the bridge then clears Twilio's queue and truncates what wasn't heard.
    """
    session: dict[str, Any] = {
        "type": "realtime",
        "model": config.model,
        "output_modalities": ["audio"],
        "instructions": config.instructions,
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "transcription": {"model": config.transcription_model},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": config.vad_threshold,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": config.vad_silence_ms,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": config.voice},
        },
    }
    if config.tools:
        session["tools"] = list(config.tools)
        session["tool_choice"] = "auto"
    return encode({"type": "session.update", "session": session})


LIVENESS_PROBE = encode({"type": "session.update", "session": {"type": "realtime"}})
"""Changes nothing, and every live session answers it (`session.updated`): asked when a
session has been quiet a while, so one that keeps its socket alive but stopped working
is found out instead of leaving the caller in dead air."""


def greeting_instructions(greeting: str) -> str:
    """Instructions for the first response, so the agent opens with the greeting."""
    return f"Greet the caller by saying exactly this, then wait for them: {greeting}"
