"""Reading calls back, written once for every backend (`TranscriptArchive`).

Keys carry the day, so a listing narrows by date from keys alone and only asks for the
summaries of the days it shows; newest first means newest day first, then by start time.
A summary may cost a request (a HEAD on a bucket), so a day's are fetched in parallel.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date

from voicebridge.storage.base import CallRef, TranscriptArchive
from voicebridge.storage.local import LocalTranscriptStore
from voicebridge.storage.summary import Summary

SUMMARY_REQUESTS = 8  # in flight at once: within boto3's pool of 10 connections


def newest_first(
    archive: TranscriptArchive,
    since: date | None = None,
    until: date | None = None,
    limit: int | None = None,
) -> list[Summary]:
    """Calls in the inclusive date range, newest first, at most `limit` of them."""
    by_day: dict[date, list[CallRef]] = defaultdict(list)
    for ref in archive.calls(since, until):
        by_day[ref.day].append(ref)
    found: list[Summary] = []
    with ThreadPoolExecutor(max_workers=SUMMARY_REQUESTS) as pool:
        for day in sorted(by_day, reverse=True):
            summaries = pool.map(archive.summary, by_day[day])
            found += sorted(summaries, key=lambda summary: summary.started_at, reverse=True)
            if limit is not None and len(found) >= limit:
                return found[:limit]
    return found


@dataclass
class SyncResult:
    downloaded: list[CallRef] = field(default_factory=list)
    already_present: int = 0


def sync(archive: TranscriptArchive, destination: LocalTranscriptStore) -> SyncResult:
    """Copy every call `destination` lacks; what is there already is not downloaded."""
    result = SyncResult()
    for ref in sorted(archive.calls(), key=lambda ref: ref.key):
        if destination.has(ref):
            result.already_present += 1
            continue
        destination.save(archive.fetch(ref))
        result.downloaded.append(ref)
    return result
