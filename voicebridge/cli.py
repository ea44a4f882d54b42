"""`voicebridge` / `python -m voicebridge`: the command line.

Each command group lives beside the code it drives and registers its own sub-parser;
this module only assembles them and turns configuration errors into readable exits.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from voicebridge.errors import CommandError
from voicebridge.settings import (
    DevSettings,
    Settings,
    SettingsError,
    TwilioSettings,
    check_port,
    load_serving_settings,
    load_settings_as,
)
from voicebridge.simulate_cli import add_command as add_simulate_command
from voicebridge.storage.cli import add_commands as add_transcript_commands


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    except CommandError as error:
        print(f"voicebridge: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `voicebridge transcripts list | head -1`: the reader has what it wanted. As
        # Python's docs advise: stdout to devnull, so the exit's flush cannot fail again;
        # the status is a SIGPIPE death's, as for `cat`.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicebridge", description="Bridge Twilio phone calls to the OpenAI Realtime API."
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_dev(commands)
    _add_twilio(commands)
    _add_call(commands)
    add_simulate_command(commands)
    add_transcript_commands(commands)
    return parser


def port_number(value: str) -> int:
    """`--port`: a TCP port, checked as the PORT setting is."""
    try:
        return check_port(int(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1-65535)") from None


def _add_call(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    call = commands.add_parser("call", help="have the agent call a number")
    call.add_argument("to", help="the number to call, E.164 (+15551234567)")
    call.add_argument(
        "--instructions", help="instructions for this call: TEXT, or @FILE to read them"
    )
    call.add_argument("--greeting", help="what the agent says first on this call")
    call.set_defaults(run=_call)


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", default="0.0.0.0", help="interface to listen on")  # noqa: S104
    serve.add_argument(
        "--port", type=port_number, help="port (default: the PORT setting, else 8080)"
    )
    serve.add_argument(
        "--reload", action="store_true", help="restart when voicebridge/ code changes"
    )
    serve.set_defaults(run=_serve)


def _add_dev(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = commands.add_parser(
        "dev",
        help="develop against your phone: server with reload, ngrok tunnel, number pointed at it",
    )
    dev.add_argument(
        "--port", type=port_number, help="local port (default: the PORT setting, else 8080)"
    )
    dev.set_defaults(run=_dev)


def _add_twilio(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    twilio = commands.add_parser("twilio", help="configure your Twilio number")
    actions = twilio.add_subparsers(title="actions", required=True, metavar="ACTION")
    point = actions.add_parser(
        "point-number", help="send TWILIO_PHONE_NUMBER's calls to URL (its voice webhook, POST)"
    )
    point.add_argument("url", help="https://host/twilio/voice, or just https://host")
    point.set_defaults(run=_point_number)


def _serve(args: argparse.Namespace) -> int:
    from voicebridge.dev import ensure_port_free
    from voicebridge.logs import configure_logging, register_secrets
    from voicebridge.main import create_app
    from voicebridge.server import run, run_reloading

    settings = load_serving_settings(Settings)
    port = args.port or settings.port
    ensure_port_free(port, args.host, command="make run")
    register_secrets(*settings.secret_values())
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)  # with --reload too: bad settings stop us here, readably
    if args.reload:
        run_reloading(settings, args.host, port)
    else:
        run(app, settings, args.host, port)
    return 0


def _dev(args: argparse.Namespace) -> int:
    from voicebridge.dev import DevDependencies, run_dev

    settings = load_serving_settings(DevSettings)
    return run_dev(settings, args.port or settings.port, DevDependencies.real())


def _point_number(args: argparse.Namespace) -> int:
    from voicebridge.telephony.rest import TwilioAccountError, TwilioNumber, voice_webhook_url

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


def _call(args: argparse.Namespace) -> int:
    from voicebridge.telephony.outbound import OutboundCall, OutboundError, check_number, place_call
    from voicebridge.telephony.rest import TwilioAccountError, client_from_settings, readable_errors
    from voicebridge.telephony.signatures import StreamTokens

    settings = load_settings_as(TwilioSettings)
    instructions = args.instructions
    if instructions and instructions.startswith("@"):
        path = Path(instructions[1:])
        if not path.is_file():
            raise CommandError(f"no such instructions file: {path}")
        instructions = path.read_text(encoding="utf-8").strip()
    tokens = StreamTokens(settings.stream_signing_key(), settings.stream_token_ttl_s)
    try:
        to = check_number(args.to, settings.outbound_allowed_prefixes)
        call = OutboundCall(to, instructions, args.greeting)
        with readable_errors(settings.twilio_account_sid):
            call_sid = place_call(client_from_settings(settings), call, settings, tokens)
    except (OutboundError, TwilioAccountError) as error:
        raise CommandError(str(error)) from None
    print(f"calling {to}: {call_sid}")
    return 0
