"""Configuration from the environment and an optional `.env` file.

Every setting is validated at start-up; a bad configuration stops the process with one
message that lists every problem and how to fix it (`SettingsError`), never a traceback.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.call.tools import ToolsError, load_tools

DEFAULT_INSTRUCTIONS = (
    "You are a friendly, concise voice assistant on a phone call. Speak naturally, in short "
    "sentences, and let the caller interrupt you. If you don't know something, say so."
)

AddressingStyle = Literal["auto", "virtual", "path"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# What to tell a user about each setting when it is missing or wrong.
HINTS: dict[str, str] = {
    "OPENAI_API_KEY": "your OpenAI API key (https://platform.openai.com/api-keys), e.g. sk-…",
    "OPENAI_REALTIME_URL": "a ws:// or wss:// URL, default wss://api.openai.com/v1/realtime",
    "OPENAI_REALTIME_MODEL": "a Realtime model such as gpt-realtime or gpt-realtime-mini",
    "PUBLIC_BASE_URL": "the https URL Twilio reaches this server at, e.g. https://abc.ngrok.app",
    "AGENT_INSTRUCTIONS_FILE": "a readable text file with the agent's instructions",
    "AGENT_VOICE": "a Realtime voice such as ash, alloy, coral, sage, verse, marin or cedar",
    "TRANSCRIPTS_DIR": "a writable directory for call transcripts",
    "TRANSCRIPTS_BUCKET": (
        "an S3 bucket name, 3-63 lowercase letters, digits, dots or hyphens "
        "(read from TRANSCRIPTS_BUCKET, else from BUCKET_NAME as Fly's Tigris sets it)"
    ),
    "AWS_ENDPOINT_URL_S3": "the S3 API URL, e.g. https://fly.storage.tigris.dev; empty for AWS",
    "AWS_REGION": "the bucket's region, e.g. us-east-1 (AWS), auto (Tigris, R2)",
    "S3_ADDRESSING_STYLE": "auto, virtual (bucket.host: Tigris, AWS) or path (host/bucket: MinIO)",
    "TRANSCRIPT_SPOOL_DIR": "a writable directory where transcripts wait for upload",
    "TRANSCRIPT_FLUSH_TIMEOUT_S": "seconds to keep uploading at shutdown, 0-300 (Fly kill_timeout)",
    "TWILIO_ACCOUNT_SID": "your Twilio Account SID (starts with AC, from console.twilio.com)",
    "TWILIO_AUTH_TOKEN": "your Twilio Auth Token, beside the Account SID on console.twilio.com",
    "TWILIO_PHONE_NUMBER": "your Twilio number in E.164 form, e.g. +15551234567",
    "NGROK_AUTHTOKEN": (
        "your ngrok authtoken (https://dashboard.ngrok.com/get-started/your-authtoken); "
        "or set PUBLIC_BASE_URL if you run your own tunnel"
    ),
    "NGROK_DOMAIN": "a domain of your ngrok account (https://dashboard.ngrok.com/domains)",
    "NGROK_PATH": "an ngrok agent executable on disk; unset, pyngrok finds or downloads one",
    "FORWARDED_ALLOW_IPS": "the proxies to believe X-Forwarded-For from, e.g. 127.0.0.1,::1",
    "PORT": "the port to listen on, 1-65535 (default 8080)",
    "LOG_LEVEL": f"one of {', '.join(LOG_LEVELS)} (default INFO)",
    "LOG_FORMAT": "text or json",
}


class SettingsError(Exception):
    """A configuration that cannot run; `str()` is the readable message for the user."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = ["VoiceBridge cannot start: fix these settings (environment or .env file):"]
        lines += [f"  - {name}: {problem}" for name, problem in problems]
        lines.append("See .env.example for every setting.")
        super().__init__("\n".join(lines))


class _EnvSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )


class CallerSettings(_EnvSettings):
    """What `voicebridge simulate` shares with the server it calls: the token to sign the
    webhook with and the URL the server checks signatures against. A client: it needs no
    OpenAI key and no other server setting."""

    public_base_url: str | None = None
    twilio_auth_token: SecretStr | None = None

    @field_validator("public_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL such as https://abc.ngrok.app")
        if parts.query:
            raise ValueError("must not carry a query string")
        return value.strip().rstrip("/")


class StorageSettings(_EnvSettings):
    """Where transcripts go: enough on its own for `voicebridge transcripts` on a laptop,
    which must not demand an OpenAI key just to read calls back."""

    transcripts_dir: Path = Path("transcripts")
    transcripts_bucket: str | None = Field(
        default=None, validation_alias=AliasChoices("transcripts_bucket", "bucket_name")
    )
    # boto3 reads these from the process environment but not from `.env`: pass explicitly.
    aws_endpoint_url_s3: str | None = None
    aws_region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    s3_addressing_style: AddressingStyle = "auto"
    transcript_spool_dir: Path = Path("spool")
    transcript_flush_timeout_s: Annotated[float, Field(ge=0, le=300)] = 10.0

    @field_validator("transcripts_bucket")
    @classmethod
    def _bucket_name(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        if value and not _BUCKET_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid bucket name")
        return value or None

    @field_validator("aws_endpoint_url_s3")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/") or None

    @field_validator("aws_region", "aws_access_key_id")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return (value or "").strip() or None


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class Settings(StorageSettings, CallerSettings):
    """All settings; names match the environment variables (case-insensitive)."""

    openai_api_key: SecretStr
    openai_realtime_url: str = "wss://api.openai.com/v1/realtime"
    openai_realtime_model: str = "gpt-realtime"

    agent_instructions: str = DEFAULT_INSTRUCTIONS
    agent_instructions_file: Path | None = None
    agent_voice: str = "ash"
    agent_greeting: str = ""
    transcription_model: str = "whisper-1"
    vad_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    vad_silence_ms: Annotated[int, Field(ge=100, le=5000)] = 500

    twilio_account_sid: str | None = None
    twilio_phone_number: str | None = None
    twilio_api_base_url: str | None = None
    twilio_validate_signatures: bool = True
    stream_token_secret: SecretStr | None = None
    stream_token_ttl_s: Annotated[int, Field(ge=10, le=3600)] = 300

    realtime_reconnect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    realtime_stall_timeout_s: Annotated[float, Field(gt=0, le=120)] = 8.0
    realtime_session_max_s: Annotated[float, Field(gt=0, le=3600)] = 55 * 60

    model_prices: dict[str, dict[str, float]] | None = None

    api_token: SecretStr | None = None
    outbound_allowed_prefixes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    machine_detection: bool = False
    voicemail_message: str = ""

    agent_tools: str | None = None
    tool_timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0
    transfer_number: str | None = None

    drain_timeout: Annotated[float, Field(ge=0, le=3600)] = 120.0

    max_concurrent_calls: Annotated[int, Field(ge=1)] = 100
    max_call_seconds: Annotated[int, Field(ge=1)] = 7200
    forwarded_allow_ips: str = "127.0.0.1,::1"

    ngrok_authtoken: SecretStr | None = None
    ngrok_domain: str | None = None
    ngrok_path: Path | None = None

    port: int = 8080
    log_level: str = "INFO"
    log_format: Annotated[str, Field(pattern="^(text|json)$")] = "text"

    @field_validator("openai_api_key")
    @classmethod
    def _key_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty")
        return value

    @field_validator("openai_realtime_url")
    @classmethod
    def _websocket_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("ws", "wss"):
            raise ValueError("must start with ws:// or wss://")
        return value.rstrip("?")

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        return check_port(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        level = str(value).strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level")
        return level

    @field_validator("outbound_allowed_prefixes", mode="before")
    @classmethod
    def _prefixes(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for prefix in value:
                if not (
                    isinstance(prefix, str) and prefix.startswith("+") and prefix[1:].isdigit()
                ):
                    raise ValueError(f"{prefix!r} is not a +country/prefix such as +1 or +4420")
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies(cls, value: str) -> str:
        """The proxies whose X-Forwarded-For/-Proto uvicorn believes: IPs, networks or *."""
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            if entry != "*":
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"{entry!r} is not an IP address, a network or *") from None
        return ",".join(entries)

    @field_validator("agent_instructions_file")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("twilio_account_sid")
    @classmethod
    def _account_sid(cls, value: str | None) -> str | None:
        if value and not value.startswith("AC"):
            raise ValueError("must start with AC")
        return value or None

    @field_validator("twilio_phone_number", "transfer_number")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value and not (value.startswith("+") and value[1:].isdigit()):
            raise ValueError("must be in E.164 form, e.g. +15551234567")
        return value or None

    @field_validator("ngrok_domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        """Accept the domain as the dashboard shows it, with or without https://."""
        if value is None or not value.strip():
            return None
        domain = value.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
        if "/" in domain or "." not in domain:
            raise ValueError("must be a domain such as your-name.ngrok-free.app")
        return domain

    @field_validator("ngrok_path")
    @classmethod
    def _executable(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"no ngrok agent at {value}")
        if not os.access(value, os.X_OK):
            raise ValueError(f"{value} is not executable")
        return value

    def serving_problems(self) -> list[tuple[str, str]]:
        """Problems that only matter to a server taking calls (the CLI runs without):
        found by using the values (a token to check, a directory to write, AGENT_TOOLS to
        import)."""
        problems: list[tuple[str, str]] = []
        if self.twilio_validate_signatures and self.twilio_auth_token is None:
            problems.append(
                (
                    "TWILIO_AUTH_TOKEN",
                    "not set — needed to verify that webhooks come from Twilio "
                    "(console.twilio.com → Account Info); for local experiments only, "
                    "TWILIO_VALIDATE_SIGNATURES=false",
                )
            )
        # Where finished calls are written first: found out now, not after the first call.
        name, directory = (
            ("TRANSCRIPT_SPOOL_DIR", self.transcript_spool_dir)
            if self.transcripts_bucket
            else ("TRANSCRIPTS_DIR", self.transcripts_dir)
        )
        try:
            directory.mkdir(parents=True, exist_ok=True)
            writable = os.access(directory, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            problems.append((name, f"cannot write to {directory} — choose a writable directory"))
        if self.agent_tools:
            try:
                load_tools(self.agent_tools)
            except ToolsError as error:
                problems.append(("AGENT_TOOLS", str(error)))
        return problems

    def secret_values(self) -> list[str]:
        """Every secret this process knows, for the log scrubber."""
        values = [
            value.get_secret_value()
            for value in vars(self).values()
            if isinstance(value, SecretStr)
        ]
        return [*values, os.environ.get("AWS_SECRET_ACCESS_KEY", "")]

    def stream_signing_key(self) -> bytes:
        """The key of the stream tokens: shared by every machine of a deployment, so any
        of them can check a token another issued. Derived from a secret they all have."""
        if self.stream_token_secret is not None:
            base = self.stream_token_secret.get_secret_value()
        elif self.twilio_auth_token is not None:
            base = self.twilio_auth_token.get_secret_value()
        else:
            base = self.openai_api_key.get_secret_value()
        return hashlib.sha256(b"voicebridge stream token|" + base.encode()).digest()

    @property
    def instructions(self) -> str:
        """The agent's instructions: the file wins over the inline setting."""
        if self.agent_instructions_file is not None:
            return self.agent_instructions_file.read_text(encoding="utf-8").strip()
        return self.agent_instructions

    @property
    def realtime_url(self) -> str:
        """The Realtime WebSocket URL with the model as query parameter."""
        separator = "&" if "?" in self.openai_realtime_url else "?"
        return f"{self.openai_realtime_url}{separator}model={self.openai_realtime_model}"

    @property
    def stream_url(self) -> str | None:
        """The wss:// URL of our media stream, derived from PUBLIC_BASE_URL only."""
        if self.public_base_url is None:
            return None
        scheme, rest = self.public_base_url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/media-stream"


class TwilioSettings(Settings):
    """Settings of commands that configure the Twilio number: its account is required."""

    twilio_account_sid: str
    twilio_auth_token: SecretStr
    twilio_phone_number: str

    @field_validator(
        "twilio_account_sid", "twilio_auth_token", "twilio_phone_number", mode="before"
    )
    @classmethod
    def _not_blank(cls, value: Any) -> Any:
        """A line like `TWILIO_AUTH_TOKEN=` copied from .env.example counts as not set."""
        if isinstance(value, str) and not value.strip():
            raise ValueError("not set")
        return value


class DevSettings(TwilioSettings):
    """`voicebridge dev` also opens an ngrok tunnel, unless PUBLIC_BASE_URL names your own."""

    ngrok_authtoken: SecretStr | None = Field(default=None, validate_default=True)

    @field_validator("ngrok_authtoken")
    @classmethod
    def _tunnel_needs_token(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # Validated after PUBLIC_BASE_URL (field order), so `info.data` already holds it.
        blank = value is None or not value.get_secret_value().strip()
        if blank and info.data.get("public_base_url") is None:
            raise ValueError("not set")
        return value


SettingsT = TypeVar("SettingsT", bound=_EnvSettings)
ServingT = TypeVar("ServingT", bound=Settings)


def check_port(port: int) -> int:
    """A TCP port number: else uvicorn fails with an errno, or the OS picks another port."""
    if not 1 <= port <= 65535:
        raise ValueError(f"{port} is not a port number")
    return port


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning every validation problem into one `SettingsError`."""
    return load_settings_as(Settings, **overrides)


def load_serving_settings(model: type[ServingT], **overrides: Any) -> ServingT:
    """The settings of a server (`serve`, `dev`): the problems of the values and those
    found only with them (`serving_problems`: signatures, directories, AGENT_TOOLS) in one
    `SettingsError`, so a user fixes everything in one round."""
    try:
        settings = model(**overrides)
    except ValidationError as error:
        problems = _problems(error)
        reported = {name for name, _ in problems}
        stand_in = _without_failed(model, error, overrides)
        if stand_in is not None:
            problems += [p for p in stand_in.serving_problems() if p[0] not in reported]
        raise SettingsError(problems) from None
    problems = settings.serving_problems()
    if problems:
        raise SettingsError(problems)
    return settings


def _without_failed(
    model: type[ServingT], error: ValidationError, overrides: dict[str, Any]
) -> ServingT | None:
    """The settings with every value that failed at its default (None for a required
    one), unchecked: enough to look for the problems the other values have."""
    failed = {str(item["loc"][0]).lower() for item in error.errors() if item["loc"]}

    def drop_failed(data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if key.lower() not in failed}
        return data

    unchecked = {
        name: (Any, None if field.is_required() else field.get_default(call_default_factory=True))
        for name, field in model.model_fields.items()
        if name in failed
    }
    lenient = create_model(  # type: ignore[call-overload]
        f"Lenient{model.__name__}",
        __base__=model,
        __validators__={"_drop_failed": model_validator(mode="before")(drop_failed)},
        **unchecked,
    )
    lenient.model_config["validate_default"] = False  # BaseSettings validates defaults
    lenient.model_rebuild(force=True)
    try:
        return lenient(**overrides)  # type: ignore[no-any-return]
    except ValidationError:
        return None


def load_storage_settings(**overrides: Any) -> StorageSettings:
    """Only the transcript-storage settings (what the `transcripts` commands need)."""
    return load_settings_as(StorageSettings, **overrides)


def load_settings_as(model: type[SettingsT], **overrides: Any) -> SettingsT:
    """Read the settings a command needs (`TwilioSettings`, `DevSettings`…), problems in one go."""
    try:
        return model(**overrides)
    except ValidationError as error:
        raise SettingsError(_problems(error)) from None


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for item in error.errors():
        name = str(item["loc"][0]).upper() if item["loc"] else "?"
        if item["type"] == "missing":
            message = "not set"
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
        hint = HINTS.get(name)
        problems.append((name, f"{message} — {hint}" if hint else message))
    return problems
