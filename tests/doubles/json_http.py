"""The HTTP side of the stand-in REST servers (Twilio's API, ngrok's agent API): read the
body, let the double answer, write JSON back. Each double keeps only its own logic."""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

# (method, path, headers, body) -> (status, JSON payload or None for an empty body)
Answer = Callable[[str, str, Any, str], tuple[int, Any]]


def json_handler(answer: Answer, *, keep_alive: bool = False) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def do_DELETE(self) -> None:
            self._answer()

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            status, payload = answer(self.command, self.path, self.headers, body)
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: each double keeps its own request log."""

    return Handler
