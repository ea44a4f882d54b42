"""The ngrok tunnel of `make dev`, opened with pyngrok.

pyngrok runs the ngrok agent (`NGROK_PATH`, else `ngrok` on PATH, else the copy pyngrok
downloads on first use) and asks the agent's local API for an https endpoint forwarding
to our port, on `NGROK_DOMAIN` when set. Whatever goes wrong comes out as `TunnelError`
with one readable sentence; the authtoken never appears in it.

pyngrok is a dev dependency (the production image leaves it out), so it is imported only
when a tunnel opens or closes: the server and the other commands never need it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyngrok.conf import PyngrokConfig
    from pyngrok.exception import PyngrokError

AUTHTOKEN_PAGE = "https://dashboard.ngrok.com/get-started/your-authtoken"
_AUTH_FAILURE = re.compile(r"authentication failed|ERR_NGROK_10[5-8]\b|authtoken", re.IGNORECASE)
_ERROR_CODE = re.compile(r"ERR_NGROK_\d+")

# pyngrok relays each line the agent logs as a log record. An authentication failure can
# quote the authtoken, and what matters reaches the user as a `TunnelError`, so the agent's
# own lines stay out of our output.
_agent_log = logging.getLogger("pyngrok.process.ngrok")
_agent_log.addHandler(logging.NullHandler())
_agent_log.propagate = False


class TunnelError(Exception):
    """The tunnel could not be opened; `str()` is the readable message."""


def require_pyngrok() -> None:
    """Fail in one line, before anything starts, where the dev dependencies are missing."""
    if importlib.util.find_spec("pyngrok") is None:
        raise TunnelError(
            "the ngrok tunnel needs pyngrok, a dev dependency that is not installed: "
            "run `make dev` from a clone (it installs the dev dependencies)"
        )


@dataclass
class Tunnel:
    """An open tunnel; `close()` removes the endpoint and stops the agent."""

    public_url: str
    config: PyngrokConfig

    def close(self) -> None:
        from pyngrok import ngrok
        from pyngrok.exception import PyngrokError

        # Stopping the agent next removes every endpoint anyway, so a failure here is moot.
        with contextlib.suppress(PyngrokError):
            ngrok.disconnect(self.public_url, self.config)
        ngrok.kill(self.config)


def open_tunnel(
    port: int,
    *,
    authtoken: str,
    domain: str | None = None,
    ngrok_path: Path | None = None,
    config_path: Path | None = None,
) -> Tunnel:
    """Forward `https://<domain or a generated name>` to `http://127.0.0.1:<port>`.

    `config_path` is the agent's config file (default: ngrok's own, ~/.config/ngrok).
    """
    require_pyngrok()
    from pyngrok import ngrok
    from pyngrok.conf import PyngrokConfig
    from pyngrok.exception import PyngrokError, PyngrokNgrokInstallError

    agent = ngrok_path or _agent_on_path()
    config = PyngrokConfig(
        ngrok_path=str(agent) if agent else None,
        config_path=str(config_path) if config_path else None,
        auth_token=authtoken,
    )
    options = {"url": f"https://{domain}"} if domain else {}
    try:
        endpoint = ngrok.connect(
            f"http://127.0.0.1:{port}", name="voicebridge", pyngrok_config=config, **options
        )
    except PyngrokNgrokInstallError:
        raise TunnelError(
            "the ngrok agent is not installed and could not be downloaded: install it "
            "(https://ngrok.com/download) and set NGROK_PATH to it"
        ) from None
    except (PyngrokError, OSError) as error:
        ngrok.kill(config)
        raise TunnelError(_describe(error, authtoken, domain)) from None
    assert endpoint.public_url is not None  # pyngrok raises when the agent gives none
    return Tunnel(endpoint.public_url.replace("http://", "https://", 1), config)


def _agent_on_path() -> Path | None:
    found = shutil.which("ngrok")
    return Path(found) if found else None


def _describe(error: PyngrokError | OSError, authtoken: str, domain: str | None) -> str:
    from pyngrok.exception import PyngrokNgrokHTTPError

    if isinstance(error, OSError):
        return f"cannot run the ngrok agent: {error.strerror or error}"
    message = _agent_message(error)
    code = _ERROR_CODE.search(message)
    if _AUTH_FAILURE.search(message):
        suffix = f" ({code.group()})" if code else ""
        return f"ngrok rejected NGROK_AUTHTOKEN{suffix}: copy it again from {AUTHTOKEN_PAGE}"
    message = message.replace(authtoken, "[NGROK_AUTHTOKEN]").strip().rstrip(".")
    if isinstance(error, PyngrokNgrokHTTPError):
        if error.status_code == 404:
            return "the ngrok agent is too old to open endpoints: run `ngrok update`"
        if domain:
            return f"ngrok could not open https://{domain} (NGROK_DOMAIN): {message}"
    return f"ngrok could not open a tunnel: {message}"


def _agent_message(error: PyngrokError) -> str:
    """The agent's own words: its start-up error, or the `details.err` of an API answer."""
    from pyngrok.exception import PyngrokNgrokError, PyngrokNgrokHTTPError

    if isinstance(error, PyngrokNgrokHTTPError):
        try:
            body = json.loads(error.body or "")
        except ValueError:
            body = None
        if isinstance(body, dict):
            details = body.get("details")
            detail = details.get("err") if isinstance(details, dict) else None
            return str(detail or body.get("msg") or error)
    if isinstance(error, PyngrokNgrokError) and error.ngrok_error:
        return error.ngrok_error
    return str(error)
