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

from app.settings import DevSettings, SettingsError, TwilioSettings, load_settings, load_settings_as


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
    _add_dev(commands)
    _add_twilio(commands)
    _add_simulate(commands)
    # Imported here: the group's module needs `CommandError` from this one.
    from app.storage.cli import add_commands as add_transcript_commands

    add_transcript_commands(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", default="0.0.0.0", help="interface to listen on")  # noqa: S104
    serve.add_argument("--port", type=int, default=None, help="port (default: $PORT or 8080)")
    serve.add_argument("--reload", action="store_true", help="restart when app/ code changes")
    serve.set_defaults(run=_serve)


def _add_dev(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = commands.add_parser(
        "dev",
        help="develop against your phone: server with reload, ngrok tunnel, number pointed at it",
    )
    dev.add_argument("--port", type=int, default=None, help="local port (default: $PORT or 8080)")
    dev.set_defaults(run=_dev)


def _add_twilio(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    twilio = commands.add_parser("twilio", help="configure your Twilio number")
    actions = twilio.add_subparsers(title="actions", required=True, metavar="ACTION")
    point = actions.add_parser(
        "point-number", help="send TWILIO_PHONE_NUMBER's calls to URL (its voice webhook, POST)"
    )
    point.add_argument("url", help="https://host/twilio/voice, or just https://host")
    point.set_defaults(run=_point_number)


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
    from app.logs import configure_logging, register_secrets
    from app.main import create_app
    from app.server import run, run_reloading

    settings = load_settings()
    register_secrets(*settings.secret_values())
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)  # with --reload too: bad settings stop us here, readably
    if args.reload:
        run_reloading(settings, args.host, _port(args))
    else:
        run(app, settings, args.host, _port(args))
    return 0


def _port(args: argparse.Namespace) -> int:
    return int(args.port or os.environ.get("PORT", "8080"))


def _dev(args: argparse.Namespace) -> int:
    from app.dev import DevDependencies, run_dev

    return run_dev(load_settings_as(DevSettings), _port(args), DevDependencies.real())


def _point_number(args: argparse.Namespace) -> int:
    from app.telephony.rest import TwilioAccountError, TwilioNumber, voice_webhook_url

    try:
        url = voice_webhook_url(args.url)
    except ValueError as error:
        raise CommandError(str(error)) from None
    settings = load_settings_as(TwilioSettings)
    try:
        previous = TwilioNumber.from_settings(settings).point_number(url)
    except TwilioAccountError as error:
        raise CommandError(str(error)) from None
    print(f"{settings.twilio_phone_number} now sends calls to {url} (POST); before: {previous}")
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
