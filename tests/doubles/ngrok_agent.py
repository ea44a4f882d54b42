"""A stand-in for the ngrok agent: the little of it that pyngrok uses.

`install(directory, authtoken=…)` writes an executable `ngrok` script (shebang: this
venv's Python) to pass as pyngrok's `ngrok_path` / our NGROK_PATH. Run as pyngrok runs it,
`ngrok start --none --log stdout [--config F] [--authtoken T] [--region R]`, it:

- serves the agent's local API on a loopback port, then logs in ngrok's logfmt the three
  lines pyngrok waits for (`starting web service addr=…`, `client session established`,
  `tunnel session started`);
- with another authtoken, logs the agent's authentication error and exits 1;
- `POST /api/endpoints` opens `https://<random>.ngrok-free.app`, or the requested `url`
  if its domain is one of the account's `domains`; `GET`/`DELETE /api/endpoints[/name]`;
- appends every operation to a JSON-lines file the test reads with `events()`;
- exits when its parent dies, so a crashed test leaves no agent behind.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.doubles.json_http import json_handler

ROOT = Path(__file__).resolve().parents[2]
# Like the real agent's, it quotes the token it was given: our side must not repeat it.
AUTH_ERROR = (
    "authentication failed: The authtoken you specified is not valid. Your authtoken: {token} "
    "Get yours at https://dashboard.ngrok.com/get-started/your-authtoken ERR_NGROK_107"
)


@dataclass(frozen=True)
class FakeNgrokAgent:
    path: Path
    """The executable: NGROK_PATH."""
    events_path: Path

    def events(self, op: str | None = None) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        events = [json.loads(line) for line in lines if line.strip()]
        return [e for e in events if op is None or e["op"] == op]


def install(directory: Path, *, authtoken: str, domains: tuple[str, ...] = ()) -> FakeNgrokAgent:
    """Write the agent script into `directory`; it accepts only `authtoken`."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "ngrok"
    events = directory / "ngrok-events.jsonl"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.doubles.ngrok_agent import main\n"
        f"sys.exit(main(sys.argv[1:], authtoken={authtoken!r}, events={str(events)!r}, "
        f"domains={domains!r}))\n"
    )
    script.chmod(0o755)
    return FakeNgrokAgent(script, events)


def main(argv: list[str], *, authtoken: str, events: str, domains: tuple[str, ...]) -> int:
    parser = argparse.ArgumentParser(prog="ngrok")
    parser.add_argument("command", choices=["start"])
    parser.add_argument("--none", action="store_true")
    parser.add_argument("--log", choices=["stdout"])
    parser.add_argument("--config")
    parser.add_argument("--authtoken")
    parser.add_argument("--region")
    args = parser.parse_args(argv)
    agent = _Agent(Path(events), domains)
    agent.record("start", authtoken_ok=args.authtoken == authtoken, config=args.config)
    if args.authtoken != authtoken:
        error = AUTH_ERROR.format(token=args.authtoken)
        _log("eror", "session closing", obj="tunnels.session", err=error)
        return 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), agent.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _log("info", "starting web service", obj="web", addr=f"127.0.0.1:{server.server_port}")
    _log("info", "client session established", obj="tunnels.session")
    _log("info", "tunnel session started", obj="tunnels.session")

    for stop in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C reaches the agent too: quietly
        signal.signal(stop, lambda signum, frame: sys.exit(0))
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.2)
    return 0


def _log(level: str, msg: str, **fields: str) -> None:
    moment = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
    extra = " ".join(f"{key}={json.dumps(value)}" for key, value in fields.items())
    print(f"t={moment} lvl={level} msg={json.dumps(msg)} {extra}", flush=True)


class _Agent:
    def __init__(self, events: Path, domains: tuple[str, ...]) -> None:
        self.events = events
        self.domains = domains
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def record(self, op: str, **fields: Any) -> None:
        with self.lock, self.events.open("a") as out:
            out.write(json.dumps({"op": op, **fields}) + "\n")

    def create(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.record("create", request=request)
        name = str(request.get("name") or secrets.token_hex(4))
        url = request.get("url") or f"https://{secrets.token_hex(6)}.ngrok-free.app"
        host = urlsplit(str(url)).hostname
        if request.get("url") and host not in self.domains:
            err = (
                f"failed to start tunnel: the domain '{host}' is not in your account ERR_NGROK_319"
            )
            return 400, {"error_code": 103, "status_code": 400, "msg": "failed to start tunnel",
                         "details": {"err": err}}  # fmt: skip
        endpoint = {
            "ID": f"ep_{secrets.token_hex(12)}",
            "name": name,
            "uri": f"/api/endpoints/{name}",
            "url": url,
            "upstream": request.get("upstream", {}),
        }
        with self.lock:
            self.endpoints[name] = endpoint
        return 201, endpoint

    def answer(self, method: str, path: str, body: str) -> tuple[int, dict[str, Any] | None]:
        name = path.removeprefix("/api/endpoints").strip("/")
        if not path.startswith("/api/endpoints"):
            return 404, {"error_code": 100, "status_code": 404, "msg": "not found"}
        if method == "POST" and not name:
            return self.create(json.loads(body or "{}"))
        with self.lock:
            if method == "GET" and not name:
                return 200, {"endpoints": list(self.endpoints.values()), "uri": "/api/endpoints"}
            endpoint = self.endpoints.get(name)
            if endpoint is None:
                return 404, {"error_code": 100, "status_code": 404, "msg": "endpoint not found"}
            if method == "DELETE":
                del self.endpoints[name]
        if method == "DELETE":
            self.record("delete", name=name)
            return 204, None
        return 200, endpoint

    def handler(self) -> type[BaseHTTPRequestHandler]:
        # stdout is the agent's log, which pyngrok parses: the handler stays quiet.
        return json_handler(lambda method, path, _headers, body: self.answer(method, path, body))
