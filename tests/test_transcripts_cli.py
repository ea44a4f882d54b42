"""`voicebridge transcripts …` end to end against the loopback S3 endpoint (and the local
directory when no bucket is set): what a user types, what they see."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from app.cli import main
from app.settings import StorageSettings
from app.storage.local import LocalTranscriptStore
from app.storage.s3 import S3TranscriptStore
from app.storage.s3client import s3_client
from tests.s3 import MotoS3, record
from tests.servers import free_port
from tests.test_settings import run_cli

pytest_plugins = ["tests.s3_fixtures"]
pytestmark = pytest.mark.usefixtures("aws_environment")

Run = Callable[..., tuple[int, str, str]]

CALLS = [
    record(call_sid="CAmarch13", started_at="2026-03-13T22:00:00.000Z", duration_s=12.0),
    record(call_sid="CAmarch14a", started_at="2026-03-14T08:00:00.000Z", turns=[]),
    record(call_sid="CAmarch14b", started_at="2026-03-14T18:45:10.250Z", duration_s=125.0),
    record(call_sid="CAapril1", started_at="2026-04-01T00:00:01.000Z", **{"from": "+4930123"}),
]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def invoke(*args: str) -> tuple[int, str, str]:
        code = main(["transcripts", *args])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    return invoke


@pytest.fixture
def bucket_env(
    monkeypatch: pytest.MonkeyPatch,
    moto: MotoS3,
    bucket: str,
    storage_settings: Callable[..., StorageSettings],
) -> S3TranscriptStore:
    """The bucket named in the environment, as a user's shell would have it, with calls."""
    for name, value in {
        "TRANSCRIPTS_BUCKET": bucket,
        "AWS_ENDPOINT_URL_S3": moto.endpoint,
        "AWS_REGION": "us-east-1",
        "S3_ADDRESSING_STYLE": "path",
    }.items():
        monkeypatch.setenv(name, value)
    settings = storage_settings()
    store = S3TranscriptStore(s3_client(settings), bucket, settings.transcript_spool_dir)
    for call in CALLS:
        store.upload(call)
    return store


@pytest.mark.usefixtures("bucket_env")
def test_list_is_newest_first_one_line_per_call(run: Run) -> None:
    code, out, _ = run("list")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[2] for line in lines] == [
        "CAapril1",
        "CAmarch14b",
        "CAmarch14a",
        "CAmarch13",
    ]
    assert lines[1].split() == [
        "2026-03-14",
        "18:45:10Z",
        "CAmarch14b",
        "+15550001111",
        "+15550002222",
        "2m05s",
        "3",
        "turns",
    ]
    assert lines[0].split()[3] == "+4930123"
    assert lines[2].split()[-2:] == ["0", "turns"]


@pytest.mark.usefixtures("bucket_env")
def test_list_narrows_by_date_and_limit(run: Run) -> None:
    _, out, _ = run("list", "--since", "2026-03-14", "--until", "2026-03-31")
    assert [line.split()[2] for line in out.splitlines()] == ["CAmarch14b", "CAmarch14a"]
    _, out, _ = run("list", "--limit", "1")
    assert [line.split()[2] for line in out.splitlines()] == ["CAapril1"]
    code, out, err = run("list", "--since", "2027-01-01")
    assert (code, out, err) == (0, "", "no transcripts found\n")
    code, _, err = run("list", "--since", "2026-04-01", "--until", "2026-03-01")
    assert (code, err) == (1, "voicebridge: --since is after --until\n")


def test_list_shows_objects_put_by_hand_without_metadata(
    run: Run, bucket_env: S3TranscriptStore, moto: MotoS3, bucket: str
) -> None:
    manual = record(call_sid="CAmanual", started_at="2026-05-01T10:00:00.000Z")
    moto.client().put_object(
        Bucket=bucket, Key="transcripts/2026/05/01/CAmanual.json", Body=json.dumps(manual)
    )
    _, out, _ = run("list", "--limit", "1")
    assert out.split()[2] == "CAmanual"


@pytest.mark.usefixtures("bucket_env")
def test_get_finds_a_call_without_its_date(run: Run, tmp_path: Path) -> None:
    code, out, _ = run("get", "CAmarch14b")
    assert code == 0
    assert json.loads(out) == CALLS[2]
    _, out, _ = run("get", "CAmarch14b", "--format", "text")
    assert out.startswith("Call CAmarch14b · inbound · +15550001111 → +15550002222\n")
    target = tmp_path / "call.txt"
    assert run("get", "CAapril1", "--format", "text", "-o", str(target)) == (0, "", "")
    assert "Call CAapril1" in target.read_text()


@pytest.mark.usefixtures("bucket_env")
def test_url_is_a_presigned_link_that_downloads_the_transcript(run: Run) -> None:
    code, out, _ = run("url", "CAmarch13", "--expires", "120")
    assert code == 0
    link = out.strip()
    assert "X-Amz-Expires=120" in link and "X-Amz-Signature=" in link
    with urllib.request.urlopen(link, timeout=5) as response:
        assert json.loads(response.read()) == CALLS[0]


@pytest.mark.usefixtures("bucket_env")
def test_url_expiry_is_checked_before_anything_is_signed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for bad in ("0", "604801", "soon"):
        with pytest.raises(SystemExit) as exited:
            main(["transcripts", "url", "CAmarch13", "--expires", bad])
        assert exited.value.code == 2
        assert "--expires" in capsys.readouterr().err


@pytest.mark.usefixtures("bucket_env")
def test_sync_downloads_only_what_is_missing(run: Run, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    code, out, err = run("sync", str(mirror))
    assert code == 0
    assert len(out.splitlines()) == 4
    assert err == f"4 downloaded, 0 already in {mirror}\n"
    assert LocalTranscriptStore(mirror).get("CAapril1") == CALLS[3]
    assert (mirror / "2026/04/01/CAapril1.txt").is_file()
    code, out, err = run("sync", str(mirror))
    assert (code, out, err) == (0, "", f"0 downloaded, 4 already in {mirror}\n")


def test_retention_sets_a_lifecycle_rule_on_the_bucket(
    run: Run, bucket_env: S3TranscriptStore, moto: MotoS3, bucket: str
) -> None:
    assert run("retention") == (0, "transcripts are kept until deleted\n", "")
    code, out, _ = run("retention", "--days", "30")
    assert code == 0
    assert out == f"transcripts in bucket {bucket} now expire 30 day(s) after upload\n"
    (rule,) = moto.client().get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["Filter"] == {"Prefix": "transcripts/"}
    assert rule["Expiration"] == {"Days": 30}
    assert run("retention") == (0, "30 days\n", "")
    assert run("retention", "--off")[0] == 0
    assert run("retention") == (0, "transcripts are kept until deleted\n", "")


@pytest.mark.usefixtures("bucket_env")
def test_no_such_call_is_one_line(run: Run) -> None:
    assert run("get", "CAnope") == (1, "", "voicebridge: no transcript for call CAnope\n")
    assert run("url", "CAnope")[2] == "voicebridge: no transcript for call CAnope\n"


@pytest.mark.usefixtures("bucket_env")
def test_missing_bucket_is_one_line(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSCRIPTS_BUCKET", "not-there")
    code, _, err = run("list")
    assert code == 1
    assert err.startswith("voicebridge: bucket 'not-there' does not exist at http://127.0.0.1:")
    assert err.count("\n") == 1


@pytest.mark.usefixtures("bucket_env")
def test_bad_credentials_are_one_line(run: Run, moto: MotoS3) -> None:
    moto.set_auth(enforced=True)
    try:
        code, _, err = run("get", "CAmarch13")
    finally:
        moto.set_auth(enforced=False)
    assert code == 1
    assert err == (
        "voicebridge: the storage service rejected the credentials (InvalidAccessKeyId): "
        "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY\n"
    )


@pytest.mark.usefixtures("bucket_env")
def test_unreachable_endpoint_is_one_line(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    code, _, err = run("sync", "mirror")
    assert code == 1
    assert err.startswith(f"voicebridge: cannot reach the storage endpoint http://127.0.0.1:{port}")
    assert err.count("\n") == 1


def test_a_bad_setting_is_the_settings_message(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUCKET_NAME", "Not_A_Bucket")
    monkeypatch.setenv("S3_ADDRESSING_STYLE", "sideways")
    code, _, err = run("list")
    assert code == 2
    assert "- TRANSCRIPTS_BUCKET: 'Not_A_Bucket' is not a valid bucket name" in err
    assert "- S3_ADDRESSING_STYLE:" in err
    assert "OPENAI_API_KEY" not in err, "reading transcripts needs no OpenAI key"


def test_without_a_bucket_the_commands_read_the_local_directory(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRANSCRIPTS_DIR", str(tmp_path / "calls"))
    local = LocalTranscriptStore(tmp_path / "calls")
    for call in CALLS:
        local.save(call)
    _, out, _ = run("list", "--limit", "2")
    assert [line.split()[2] for line in out.splitlines()] == ["CAapril1", "CAmarch14b"]
    assert json.loads(run("get", "CAmarch13")[1]) == CALLS[0]
    assert run("url", "CAmarch13")[1].startswith("file://")
    code, _, err = run("retention", "--days", "30")
    assert code == 1
    assert err.startswith("voicebridge: retention is a bucket lifecycle rule")
    code, _, err = run("sync", str(tmp_path / "copy"))
    assert (code, err) == (0, f"4 downloaded, 0 already in {tmp_path / 'copy'}\n")


def test_the_installed_command_prints_no_traceback(
    bucket_env: S3TranscriptStore, moto: MotoS3, bucket: str, tmp_path: Path
) -> None:
    env = {  # S3_ADDRESSING_STYLE unset: `auto` must pick path style for 127.0.0.1
        "TRANSCRIPTS_BUCKET": bucket,
        "AWS_ENDPOINT_URL_S3": moto.endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    found = run_cli(["transcripts", "get", "CAmarch14a"], env, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["call_sid"] == "CAmarch14a"
    missing = run_cli(["transcripts", "get", "CAnope"], env, cwd=tmp_path)
    assert (missing.returncode, missing.stderr) == (
        1,
        "voicebridge: no transcript for call CAnope\n",
    )


def test_settings_and_credentials_from_a_dotenv_file_reach_boto3(
    run: Run,
    bucket_env: S3TranscriptStore,
    moto: MotoS3,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for name in ("TRANSCRIPTS_BUCKET", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "S3_ADDRESSING_STYLE"):
        monkeypatch.delenv(name)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (tmp_path / ".env").write_text(
        f"BUCKET_NAME={bucket}\nAWS_ENDPOINT_URL_S3={moto.endpoint}\nAWS_REGION=us-east-1\n"
        "S3_ADDRESSING_STYLE=path\nAWS_ACCESS_KEY_ID=from-dotenv\nAWS_SECRET_ACCESS_KEY=x\n"
    )
    code, out, _ = run("url", "CAmarch13")
    assert code == 0
    assert "X-Amz-Credential=from-dotenv" in out
    assert json.loads(urllib.request.urlopen(out.strip(), timeout=5).read()) == CALLS[0]
