"""`voicebridge transcripts …`: read calls back from wherever the server put them.

The commands read the same settings as the server, but only the storage ones, so they
run on a laptop with just the bucket's credentials. They use the bucket when one is
set, else the local directory, through one interface (`TranscriptArchive`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

from voicebridge.errors import CommandError
from voicebridge.settings import load_storage_settings
from voicebridge.storage.base import StorageError, TranscriptArchive, TranscriptNotFound
from voicebridge.storage.catalog import newest_first, sync
from voicebridge.storage.factory import open_store
from voicebridge.storage.local import LocalTranscriptStore
from voicebridge.storage.render import render_text, summary_line

MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 presigned links live at most a week

Command = Callable[[TranscriptArchive, argparse.Namespace], int]


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = commands.add_parser(
        "transcripts",
        help="list, read and download call transcripts (bucket or local directory)",
        description="Read transcripts from TRANSCRIPTS_BUCKET, or TRANSCRIPTS_DIR without one.",
    )
    actions = group.add_subparsers(title="commands", required=True, metavar="COMMAND")

    listing = actions.add_parser("list", help="one line per call, newest first")
    listing.add_argument("--since", type=_day, help="first day, YYYY-MM-DD (UTC)")
    listing.add_argument("--until", type=_day, help="last day, YYYY-MM-DD (UTC)")
    listing.add_argument("--limit", type=_positive, default=50, help="at most N calls (default 50)")
    listing.set_defaults(run=_with_store(_list))

    get = actions.add_parser("get", help="one call's transcript, found by its CallSid")
    get.add_argument("call_sid", metavar="CALLSID")
    get.add_argument("--format", choices=("json", "text"), default="json")
    get.add_argument("-o", "--output", type=Path, help="write to FILE instead of stdout")
    get.set_defaults(run=_with_store(_get))

    url = actions.add_parser("url", help="a temporary link to one call's transcript")
    url.add_argument("call_sid", metavar="CALLSID")
    url.add_argument(
        "--expires",
        type=_expiry,
        default=3600,
        help=f"seconds the link works, 1-{MAX_PRESIGN_S} (default 3600)",
    )
    url.set_defaults(run=_with_store(_url))

    download = actions.add_parser("sync", help="download the calls DIR does not have yet")
    download.add_argument("directory", metavar="DIR", type=Path)
    download.set_defaults(run=_with_store(_sync))

    retention = actions.add_parser(
        "retention", help="show or set how long the bucket keeps transcripts"
    )
    choice = retention.add_mutually_exclusive_group()
    choice.add_argument("--days", type=_positive, help="expire transcripts after N days")
    choice.add_argument("--off", action="store_true", help="keep transcripts forever")
    retention.set_defaults(run=_with_store(_retention))


def _with_store(command: Command) -> Callable[[argparse.Namespace], int]:
    """Open the configured store and turn storage failures into one-line errors."""

    def run(args: argparse.Namespace) -> int:
        store = open_store(load_storage_settings())
        try:
            return command(store, args)
        except (StorageError, TranscriptNotFound) as error:
            raise CommandError(str(error)) from None

    return run


def _list(store: TranscriptArchive, args: argparse.Namespace) -> int:
    if args.since and args.until and args.since > args.until:
        raise CommandError("--since is after --until")
    summaries = newest_first(store, args.since, args.until, args.limit)
    for summary in summaries:
        print(summary_line(summary))
    if not summaries:
        print("no transcripts found", file=sys.stderr)
    return 0


def _get(store: TranscriptArchive, args: argparse.Namespace) -> int:
    record = store.get(args.call_sid)
    if args.format == "text":
        text = render_text(record)
    else:
        text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as error:
        raise CommandError(f"cannot write {args.output}: {error.strerror}") from None
    return 0


def _url(store: TranscriptArchive, args: argparse.Namespace) -> int:
    print(store.url(args.call_sid, args.expires))
    return 0


def _sync(store: TranscriptArchive, args: argparse.Namespace) -> int:
    try:
        result = sync(store, LocalTranscriptStore(args.directory))
    except OSError as error:
        raise CommandError(f"cannot write into {args.directory}: {error.strerror}") from None
    for ref in result.downloaded:
        print(ref.key)
    print(
        f"{len(result.downloaded)} downloaded, {result.already_present} already in "
        f"{args.directory}",
        file=sys.stderr,
    )
    return 0


def _retention(store: TranscriptArchive, args: argparse.Namespace) -> int:
    if args.days is not None or args.off:
        print(store.set_retention(None if args.off else args.days))
        return 0
    days = store.retention()
    print("transcripts are kept until deleted" if days is None else f"{days} days")
    return 0


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2026-01-31") from None


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


def _expiry(value: str) -> int:
    seconds = _positive(value)
    if seconds > MAX_PRESIGN_S:
        raise argparse.ArgumentTypeError(f"at most {MAX_PRESIGN_S} seconds (7 days)")
    return seconds
