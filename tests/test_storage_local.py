"""The local directory store and what both backends share: keys, summaries, rendering,
newest-first listing, sync."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from app.storage.base import CallRef, StorageError, TranscriptNotFound, transcript_key
from app.storage.catalog import newest_first, sync
from app.storage.local import LocalTranscriptStore
from app.storage.render import render_text, summary_line
from app.storage.summary import Summary
from tests.s3 import record

DAY_ONE = "2026-03-13T23:59:59.000Z"
DAY_TWO_EARLY = "2026-03-14T08:00:00.000Z"
DAY_TWO_LATE = "2026-03-14T17:30:00.000Z"


def filled(root: Path) -> LocalTranscriptStore:
    store = LocalTranscriptStore(root)
    store.save(record(call_sid="CAone", started_at=DAY_ONE))
    store.save(record(call_sid="CAlate", started_at=DAY_TWO_LATE))
    store.save(record(call_sid="CAearly", started_at=DAY_TWO_EARLY))
    return store


def test_save_writes_the_json_and_its_text_rendering_under_the_dated_key(
    tmp_path: Path,
) -> None:
    store = LocalTranscriptStore(tmp_path)
    where = store.save(record())
    assert where == str(tmp_path / "2026/03/14/CA00000000000000000000000000000001.json")
    assert json.loads(Path(where).read_text()) == record()
    assert Path(where).with_suffix(".txt").read_text() == render_text(record())
    assert not list(tmp_path.rglob("*.tmp"))


def test_get_finds_a_call_without_its_date(tmp_path: Path) -> None:
    store = filled(tmp_path)
    assert store.get("CAearly")["started_at"] == DAY_TWO_EARLY
    with pytest.raises(TranscriptNotFound, match="no transcript for call CAnope"):
        store.get("CAnope")
    for hostile in ("*", "../CAone", "CA?ne", ""):
        with pytest.raises(TranscriptNotFound):
            store.get(hostile)


def test_keys_derive_from_the_record_alone() -> None:
    assert (
        transcript_key(record()) == "transcripts/2026/03/14/CA00000000000000000000000000000001.json"
    )
    assert CallRef.from_key(transcript_key(record())) == CallRef(
        date(2026, 3, 14), "CA00000000000000000000000000000001"
    )
    for foreign in ("transcripts/by-call/CA1", "transcripts/2026/02/30/CA1.json", "x.json"):
        assert CallRef.from_key(foreign) is None
    with pytest.raises(ValueError, match="not a usable CallSid"):
        transcript_key(record(call_sid="../evil"))


def test_listing_is_newest_first_within_the_dates_and_the_limit(tmp_path: Path) -> None:
    store = filled(tmp_path)
    assert [s.call_sid for s in newest_first(store)] == ["CAlate", "CAearly", "CAone"]
    assert [s.call_sid for s in newest_first(store, limit=2)] == ["CAlate", "CAearly"]
    assert [s.call_sid for s in newest_first(store, until=date(2026, 3, 13))] == ["CAone"]
    assert [s.call_sid for s in newest_first(store, since=date(2026, 3, 14))] == [
        "CAlate",
        "CAearly",
    ]
    assert newest_first(store, since=date(2026, 3, 15)) == []


def test_summary_survives_object_metadata_even_for_non_ascii_values() -> None:
    summary = Summary.from_record(record(**{"from": "client:zoë", "to": "sip:bar@example.com"}))
    metadata = summary.to_metadata()
    assert all(value.isascii() for value in metadata.values())
    assert metadata["to"] == "sip:bar@example.com"
    assert Summary.from_metadata(metadata) == summary
    assert Summary.from_metadata({"content-type": "x"}) is None


def test_text_rendering_and_list_line_are_readable() -> None:
    text = render_text(record(notes=["caller hung up during the greeting"], duration_s=75.2))
    assert text.splitlines()[:4] == [
        "Call CA00000000000000000000000000000001 · inbound · +15550001111 → +15550002222",
        "Started 2026-03-14T09:26:53.589Z · 1m15s · 3 turns",
        "",
        "[00:00.0] Agent: Hello, thanks for calling.",
    ]
    assert "- caller hung up during the greeting" in text
    assert "Tokens: 120 in, 340 out over 2 responses" in text
    untranscribed = {"role": "caller", "text": "", "start_ms": 61_500, "transcribed": False}
    assert "[01:01.5] Caller: (not transcribed)" in render_text(record(turns=[untranscribed]))
    line = summary_line(Summary.from_record(record()))
    assert line.split() == [
        "2026-03-14",
        "09:26:53Z",
        "CA00000000000000000000000000000001",
        "+15550001111",
        "+15550002222",
        "42.5",
        "s",
        "3",
        "turns",
    ]


def test_sync_copies_only_what_is_missing(tmp_path: Path) -> None:
    source = filled(tmp_path / "source")
    destination = LocalTranscriptStore(tmp_path / "copy")
    destination.save(record(call_sid="CAone", started_at=DAY_ONE))
    result = sync(source, destination)
    assert [ref.call_sid for ref in result.downloaded] == ["CAearly", "CAlate"]
    assert result.already_present == 1
    assert destination.get("CAlate") == source.get("CAlate")
    assert (tmp_path / "copy/2026/03/14/CAlate.txt").is_file()
    assert sync(source, destination).downloaded == []


def test_url_is_a_file_link_and_retention_is_a_bucket_feature(tmp_path: Path) -> None:
    store = filled(tmp_path)
    assert store.url("CAone", 60) == ((tmp_path / "2026/03/13/CAone.json").resolve().as_uri())
    assert store.retention() is None
    with pytest.raises(StorageError, match="retention is a bucket lifecycle rule"):
        store.set_retention(30)


def test_an_unreadable_file_is_a_storage_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "2026/03/14/CAbroken.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(StorageError, match=r"CAbroken\.json is not a readable transcript"):
        LocalTranscriptStore(tmp_path).get("CAbroken")


def test_transcripts_of_earlier_versions_are_still_found_and_moved_when_written(
    tmp_path: Path,
) -> None:
    """Earlier versions wrote under `transcripts/YYYY/…` (the bucket's prefix, repeated)."""
    old = LocalTranscriptStore(tmp_path)
    old.save(record(call_sid="CAold", started_at="2026-03-13T10:00:00.000Z"))
    legacy = tmp_path / "transcripts/2026/03/13"
    legacy.mkdir(parents=True)
    for name in ("CAold.json", "CAold.txt"):
        (tmp_path / "2026/03/13" / name).rename(legacy / name)
    store = filled(tmp_path)
    assert store.get("CAold")["call_sid"] == "CAold"
    assert [s.call_sid for s in newest_first(store, None, None, 10)] == [
        "CAlate",
        "CAearly",
        "CAone",
        "CAold",
    ]
    store.record_call_status("CAold", {"status": "completed", "duration_s": 3})
    assert not list(legacy.iterdir()), "moved to the documented place"
    assert store.get("CAold")["call_status"]["status"] == "completed"
    assert (tmp_path / "2026/03/13/CAold.txt").is_file()


def test_one_of_a_kind_reads_as_english() -> None:
    one = record(turns=[{"role": "caller", "text": "Hi", "start_ms": 0}], usage={"responses": 1})
    text = render_text(one)
    assert " · 1 turn\n" in text
    assert "over 1 response\n" in text
    assert summary_line(Summary.from_record(one)).endswith("  1 turn")
