"""`voicebridge` / `python -m app`: the command line.

Each command group lives beside the code it drives and registers its own sub-parser;
this module only assembles them and turns configuration errors into readable exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from app.settings import SettingsError, load_settings


class CommandError(Exception):
    """A command failed for a reason the user can fix; printed as one line, exit 1."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    except CommandError as error:
        print(f"voicebridge: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicebridge", description="Bridge Twilio phone calls to the OpenAI Realtime API."
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_simulate(commands)
    # Imported here: the group's module needs `CommandError` from this one.
    from app.storage.cli import add_commands as add_transcript_commands

    add_transcript_commands(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", default="0.0.0.0", help="interface to listen on")  # noqa: S104
    serve.add_argument("--port", type=int, default=None, help="port (default: $PORT or 8080)")
    serve.set_defaults(run=_serve)


def _add_simulate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    simulate = commands.add_parser(
        "simulate", help="call a running server as Twilio would, from a WAV file"
    )
    simulate.add_argument("--wav", type=Path, required=True, help="what the caller says")
    simulate.add_argument(
        "--url", default="ws://127.0.0.1:8080/media-stream", help="the server's media stream"
    )
    simulate.add_argument(
        "--out", type=Path, default=Path("agent.wav"), help="where to save what the agent said"
    )
    simulate.add_argument("--from", dest="from_number", default="+15550001111")
    simulate.add_argument("--to", dest="to_number", default="+15550002222")
    simulate.set_defaults(run=_simulate)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.logs import configure_logging
    from app.main import create_app

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    port = args.port or int(os.environ.get("PORT", "8080"))
    uvicorn.run(
        app,
        host=args.host,
        port=port,
        log_config=None,
        ws_max_size=64 * 1024,  # Twilio frames are ~300 bytes; a flood is refused early
        proxy_headers=True,
        forwarded_allow_ips="*",
    )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from app.simulator import run_simulation

    if not args.wav.is_file():
        raise CommandError(f"no such WAV file: {args.wav}")
    summary = asyncio.run(
        run_simulation(
            args.url,
            args.wav,
            args.out,
            parameters={"from": args.from_number, "to": args.to_number, "direction": "inbound"},
        )
    )
    print(summary)
    return 0
