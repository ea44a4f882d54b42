"""fly.toml against Fly's JSON schema, and against the app it deploys.

flyctl cannot run here, so nothing else would notice a health check on a path the app
does not serve, a port the container does not listen on, or a kill timeout shorter than
the drain: each of those drops live calls on the next deploy.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from litestar.testing import TestClient

from tests import dockerfile
from tests.dockerfile import ROOT
from voicebridge.main import create_app
from voicebridge.settings import Settings, load_settings

# SchemaStore's fly.json schema, a copy kept with the tests (FLY_SCHEMA overrides the path).
SCHEMA = Path(os.environ.get("FLY_SCHEMA", Path(__file__).parent / "fixtures" / "fly.schema.json"))
FLY_MAX_KILL_TIMEOUT = 300
DRAIN_MARGIN = 10  # seconds past the drain for the goodbye and the transcript flush
SECRET_NAMES = ("OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture(scope="module")
def fly() -> dict[str, Any]:
    with (ROOT / "fly.toml").open("rb") as file:
        return tomllib.load(file)


def seconds(value: Any) -> float:
    """A Fly duration: a number of seconds, or a string like "150s" / "2m"."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m)?", str(value).strip())
    assert match, f"not a duration: {value!r}"
    number, unit = float(match[1]), match[2] or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60}[unit]


def drain_timeout_default() -> float:
    """The app's DRAIN_TIMEOUT default, once the setting exists; the agreed 120 s until then."""
    field = Settings.model_fields.get("drain_timeout")
    return seconds(field.default) if field is not None else 120.0


def test_fly_toml_matches_flys_schema(fly: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(fly)]
    assert not errors, errors


def test_internal_port_is_the_containers_port(fly: dict[str, Any]) -> None:
    port = fly["http_service"]["internal_port"]
    assert dockerfile.exposed_ports() == {port}
    assert dockerfile.env(dockerfile.stages()[-1])["PORT"] == str(port)
    assert fly["env"].get("PORT", str(port)) == str(port)


def test_health_checks_hit_a_route_the_app_serves(fly: dict[str, Any]) -> None:
    checks = fly["http_service"]["checks"]
    assert checks, "at least one [[http_service.checks]]"
    app = create_app(load_settings(openai_api_key="sk-x", twilio_auth_token="t", _env_file=None))
    with TestClient(app) as client:
        for check in checks:
            assert check.get("method", "GET").upper() == "GET"
            assert check["path"] in app.route_handler_method_map
            assert client.get(check["path"]).status_code == 200
            assert seconds(check["timeout"]) < seconds(check["interval"])


def test_kill_timeout_outlasts_the_drain_and_fly_allows_it(fly: dict[str, Any]) -> None:
    assert fly["kill_signal"] == "SIGTERM", "the server drains on SIGTERM (Fly's default: SIGINT)"
    kill_timeout = seconds(fly["kill_timeout"])
    assert kill_timeout <= FLY_MAX_KILL_TIMEOUT
    drain = drain_timeout_default()
    if "DRAIN_TIMEOUT" in fly["env"]:
        drain = max(drain, seconds(fly["env"]["DRAIN_TIMEOUT"]))
    assert kill_timeout >= drain + DRAIN_MARGIN, (kill_timeout, drain)


def test_machines_stay_up_and_deploys_roll(fly: dict[str, Any]) -> None:
    service = fly["http_service"]
    assert service["force_https"] is True
    assert service["auto_stop_machines"] in (False, "off"), "never stop a machine under a call"
    assert service["min_machines_running"] >= 1
    concurrency = service["concurrency"]
    assert concurrency["type"] == "connections"
    assert 0 < concurrency["soft_limit"] < concurrency["hard_limit"]
    field = Settings.model_fields.get("max_concurrent_calls")
    app_cap = int(fly["env"].get("MAX_CONCURRENT_CALLS", field.default if field else 10**6))
    assert concurrency["hard_limit"] <= app_cap, "the proxy must route around a full machine"
    assert fly["deploy"]["strategy"] == "rolling"
    assert (ROOT / fly["build"]["dockerfile"]).is_file()


def test_env_holds_valid_settings_and_no_secret(
    fly: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not set(fly["env"]) & set(SECRET_NAMES)
    for name, value in fly["env"].items():
        monkeypatch.setenv(name, value)
    load_settings(
        openai_api_key="sk-x", twilio_auth_token="t", _env_file=None
    )  # raises SettingsError if invalid
