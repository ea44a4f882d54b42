"""Transcripts in an S3-compatible bucket (Tigris, AWS S3, R2, MinIO…), via a spool.

Per call, three objects, each PUT under a name derived from the record alone (so a
retried upload overwrites itself, never duplicates):

- `transcripts/YYYY/MM/DD/<CallSid>.json` — the record, with its `Summary` as metadata;
- `transcripts/YYYY/MM/DD/<CallSid>.txt`  — the readable rendering, for bucket browsers;
- `transcripts/by-call/<CallSid>`         — the JSON's key, so a call is found by its
  CallSid alone with one GET instead of a listing of the whole bucket.

A Twilio status callback may reach this machine before the call's transcript exists
anywhere: its facts then wait in `transcripts/status/<CallSid>.json`, which every upload
folds in (the check happens at upload time, in the uploader's thread, so it sees notes
written by any machine up to the moment the transcript goes up).

Everything lives under `transcripts/`, so one lifecycle rule expires all of it.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from voicebridge.storage.base import (
    CallRef,
    DeliveryStats,
    Record,
    StorageError,
    TranscriptNotFound,
    call_ref,
    check_call_sid,
    fold_note,
    merge_call_status,
    pending_note,
)
from voicebridge.storage.local import encode_record
from voicebridge.storage.render import render_text
from voicebridge.storage.s3client import is_missing, readable_errors
from voicebridge.storage.spool import Spool
from voicebridge.storage.summary import Summary
from voicebridge.storage.uploader import Backoff, Uploader

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import LifecycleRuleTypeDef

log = logging.getLogger("voicebridge.transcripts")

PREFIX = "transcripts/"
BY_CALL = "transcripts/by-call/"
STATUS = "transcripts/status/"  # pending Twilio status notes, one per call
_END_OF_DATED_KEYS = "transcripts/:"  # ':' sorts after every digit, before `by-call/`
RETENTION_RULE = "voicebridge-transcripts"


class S3TranscriptStore:
    """`save` spools and returns at once; `start` runs the uploader that empties the
    spool into the bucket. Reading (`get`, `calls`, …) goes to the bucket directly."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        spool_dir: Path,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self._spool = Spool(spool_dir)
        self._uploader = Uploader(self._spool, self.upload, backoff)
        # Status callbacks of this process one at a time (GET-merge-PUT of one call).
        self._status_lock = threading.Lock()

    # --- writing: spool first, upload in the background ---

    def save(self, record: Record) -> str:
        """Spool the record for the uploader; if the spool cannot take it (disk full,
        permissions), upload it right away instead, still off the event loop."""
        try:
            self._spool.put(record)
        except OSError as error:
            log.error(
                "cannot spool transcript %s (%s); uploading it directly", record["call_sid"], error
            )
            return self.upload(record)
        self._uploader.notify()
        return f"s3://{self.bucket}/{call_ref(record).key}"

    def start(self) -> None:
        self._uploader.start()

    def close(self, timeout_s: float) -> bool:
        return self._uploader.close(timeout_s)

    @property
    def stats(self) -> DeliveryStats:
        return self._uploader.stats

    def upload(self, record: Record) -> str:
        """PUT the call's objects with any pending status note folded in, then drop it.

        The note is read again after the index entry is in: a callback on another
        machine writes its note *before* looking for the index entry, so one of the two
        always sees the other and no fact is lost between them.
        """
        call_sid = call_ref(record).call_sid
        before = self._pending_note(call_sid)
        record = fold_note(record, before)
        where = self._put(record)
        after = self._pending_note(call_sid)
        if after is not None and fold_note(record, after) != record:
            where = self._put(fold_note(record, after))
        if before is not None or after is not None:
            self._delete(STATUS + call_sid + ".json")
        return where

    def record_call_status(self, call_sid: str, facts: dict[str, Any]) -> None:
        """Into the spooled transcript if it has not gone up yet, into the bucket's copy
        if it has (GET, merge, PUT the same keys), else into a pending note."""
        check_call_sid(call_sid)
        with self._status_lock:
            if self._spool.update(call_sid, lambda record: merge_call_status(record, facts)):
                self._uploader.notify()
                return
            ref = self._find(call_sid)
            if ref is None:
                note = pending_note(call_sid, self._pending_note(call_sid), facts)
                self._put_json(STATUS + call_sid + ".json", note)
                ref = self._find(call_sid)  # uploaded meanwhile: fold the note in ourselves
                if ref is None:
                    return
                facts = {}
            self.upload(merge_call_status(self.fetch(ref), facts))

    def _put(self, record: Record) -> str:
        """PUT the call's objects (idempotent); the index entry last, once the rest is in."""
        ref = call_ref(record)
        metadata = Summary.from_record(record).to_metadata()
        with readable_errors(self.client, self.bucket):
            self.client.put_object(
                Bucket=self.bucket,
                Key=ref.text_key,
                Body=render_text(record).encode(),
                ContentType="text/plain; charset=utf-8",
                Metadata=metadata,
            )
            self.client.put_object(
                Bucket=self.bucket,
                Key=ref.key,
                Body=encode_record(record),
                ContentType="application/json",
                Metadata=metadata,
            )
            self.client.put_object(
                Bucket=self.bucket,
                Key=BY_CALL + ref.call_sid,
                Body=ref.key.encode(),
                ContentType="text/plain",
            )
        return f"s3://{self.bucket}/{ref.key}"

    # --- reading ---

    def get(self, call_sid: str) -> Record:
        return self.fetch(self._locate(call_sid))

    def calls(self, since: date | None = None, until: date | None = None) -> list[CallRef]:
        """From the key listing alone, starting at `since`'s day, stopping after `until`'s."""
        options: dict[str, Any] = {"Bucket": self.bucket, "Prefix": PREFIX}
        if since is not None:
            options["StartAfter"] = f"{PREFIX}{since:%Y/%m/%d}"
        stop = f"{PREFIX}{until + timedelta(days=1):%Y/%m/%d}" if until else _END_OF_DATED_KEYS
        refs: list[CallRef] = []
        with readable_errors(self.client, self.bucket):
            for page in self.client.get_paginator("list_objects_v2").paginate(**options):
                for entry in page.get("Contents", []):
                    if entry["Key"] >= stop:
                        return refs
                    ref = CallRef.from_key(entry["Key"])
                    if ref is not None:
                        refs.append(ref)
        return refs

    def summary(self, ref: CallRef) -> Summary:
        """From the object's metadata (a HEAD); objects put there by hand are downloaded."""
        with readable_errors(self.client, self.bucket):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=ref.key)
            except ClientError as error:
                if is_missing(error):
                    raise TranscriptNotFound(ref.call_sid) from None
                raise
        return Summary.from_metadata(head["Metadata"]) or Summary.from_record(self.fetch(ref))

    def fetch(self, ref: CallRef) -> Record:
        body = self._read(ref.key, ref.call_sid)
        try:
            record: Record = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise StorageError(f"{ref.key} is not a readable transcript: {error}") from None
        return record

    def url(self, call_sid: str, expires_s: int) -> str:
        key = self._locate(call_sid).key
        with readable_errors(self.client, self.bucket):
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
            )

    # --- retention: a bucket lifecycle rule on `transcripts/` ---

    def set_retention(self, days: int | None) -> str:
        """Add, replace or remove our rule, keeping any other rules of the bucket."""
        rules = [rule for rule in self._lifecycle_rules() if rule.get("ID") != RETENTION_RULE]
        if days is not None:
            rules.append(
                {
                    "ID": RETENTION_RULE,
                    "Filter": {"Prefix": PREFIX},
                    "Status": "Enabled",
                    "Expiration": {"Days": days},
                }
            )
        with readable_errors(self.client, self.bucket):
            if rules:
                self.client.put_bucket_lifecycle_configuration(
                    Bucket=self.bucket, LifecycleConfiguration={"Rules": rules}
                )
            else:
                self.client.delete_bucket_lifecycle(Bucket=self.bucket)
        if days is None:
            return f"transcripts in bucket {self.bucket} are kept until deleted"
        return f"transcripts in bucket {self.bucket} now expire {days} day(s) after upload"

    def retention(self) -> int | None:
        for rule in self._lifecycle_rules():
            expiration = rule.get("Expiration")
            if rule.get("ID") == RETENTION_RULE and rule.get("Status") == "Enabled" and expiration:
                return expiration.get("Days")
        return None

    def _lifecycle_rules(self) -> list[LifecycleRuleTypeDef]:
        with readable_errors(self.client, self.bucket):
            try:
                found = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
                    return []
                raise
        return cast("list[LifecycleRuleTypeDef]", found.get("Rules", []))

    # --- helpers ---

    def _find(self, call_sid: str) -> CallRef | None:
        """The call's key if its transcript is in the bucket, else None."""
        try:
            return self._locate(call_sid)
        except TranscriptNotFound:
            return None

    def _pending_note(self, call_sid: str) -> Record | None:
        """The call's pending status note; None if there is none or it is unreadable
        (a lost status fact must never hold back a transcript)."""
        try:
            body = self._read(STATUS + check_call_sid(call_sid) + ".json", call_sid)
            note = json.loads(body)
        except TranscriptNotFound:
            return None
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("ignoring an unreadable status note for %s", call_sid)
            return None
        return note if isinstance(note, dict) else None

    def _put_json(self, key: str, document: Record) -> None:
        with readable_errors(self.client, self.bucket):
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=encode_record(document),
                ContentType="application/json",
            )

    def _delete(self, key: str) -> None:
        with readable_errors(self.client, self.bucket):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def _locate(self, call_sid: str) -> CallRef:
        """The call's key, from its index entry: no date needed, no listing."""
        pointer = self._read(BY_CALL + check_call_sid(call_sid), call_sid)
        ref = CallRef.from_key(pointer.decode("utf-8", "replace").strip())
        if ref is None or ref.call_sid != call_sid:
            raise StorageError(f"the index entry {BY_CALL}{call_sid} is damaged")
        return ref

    def _read(self, key: str, call_sid: str) -> bytes:
        with readable_errors(self.client, self.bucket):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as error:
                if is_missing(error):
                    raise TranscriptNotFound(call_sid) from None
                raise
