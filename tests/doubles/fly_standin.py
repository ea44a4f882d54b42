"""A stand-in for flyctl, run as `fly` from PATH by the deploy-script tests.

flyctl cannot run here (no Fly account, no network), so this program plays it: it
appends its argv to a log (`FLY_STANDIN_LOG`, one JSON list per line) and answers from
a JSON state file (`FLY_STANDIN_STATE`) that it also updates, so a second run of the
deploy script sees what the first one created — exactly what idempotency is about.

State keys: logged_in, apps {name: {org, secrets {NAME: md5}, machines [...]}},
buckets {name: app}, storage_json (does `storage list --json` work), digest
("md5" as flyctl has shown, or "opaque": a form the script cannot check).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

OPTIONS_WITH_VALUES = {"--app", "-a", "--org", "-o", "--name", "-n", "--config", "-c"}
OPTIONS_WITH_VALUES |= {"--image-label", "--command", "-C"}


def main(argv: list[str]) -> int:
    with Path(os.environ["FLY_STANDIN_LOG"]).open("a") as log:
        log.write(json.dumps(argv) + "\n")
    path = Path(os.environ["FLY_STANDIN_STATE"])
    state: dict[str, Any] = json.loads(path.read_text())
    code = dispatch(state, argv)
    path.write_text(json.dumps(state, indent=1))
    return code


def dispatch(state: dict[str, Any], argv: list[str]) -> int:
    words = positional(argv)
    command = " ".join(words[:2])
    apps: dict[str, Any] = state.setdefault("apps", {})
    app = apps.get(option(argv, "--app") or "")
    if command == "auth whoami":
        if state.get("logged_in"):
            print("dev@example.com")
            return 0
        return fail("no access token available. Please login with 'flyctl auth login'")
    if command == "apps list":
        print(
            json.dumps([{"Name": n, "Organization": {"Slug": a["org"]}} for n, a in apps.items()])
        )
        return 0
    if command == "apps create":
        if words[2] in apps:
            return fail("Name has already been taken")
        apps[words[2]] = {"org": option(argv, "--org"), "secrets": {}, "machines": []}
        return 0
    if command == "storage list":
        return storage_list(state, json_output="--json" in argv)
    if command == "storage create":
        return storage_create(state, app, option(argv, "--name"), yes="--yes" in argv)
    if app is None:
        return fail(f"Could not find App {option(argv, '--app')!r}")
    if command == "secrets list":
        print(
            json.dumps([{"Name": k, "Digest": shown(state, d)} for k, d in app["secrets"].items()])
        )
        return 0
    if command == "secrets set":
        if "--stage" not in argv:
            return fail("stand-in: only staged secrets are expected (a plain set restarts)")
        for pair in words[2:]:
            name, _, value = pair.partition("=")
            app["secrets"][name] = md5(value)
        return 0
    if command == "deploy":
        label = option(argv, "--image-label") or "deployment-01"
        image = {"tag": label}
        app["machines"] = [
            {"id": m, "state": "started", "image_ref": image, "config": {"image": f"x:{label}"}}
            for m in ("m1", "m2")
        ]
        return 0
    if command == "machines list":
        print(json.dumps(app["machines"]))
        return 0
    if command == "ssh console":
        return 0
    return fail(f"stand-in fly: unexpected command {argv!r}")


def storage_list(state: dict[str, Any], *, json_output: bool) -> int:
    buckets: dict[str, str] = state.setdefault("buckets", {})
    if json_output:
        if not state.get("storage_json", True):
            return fail("unknown flag: --json")
        print(json.dumps([{"Name": name, "Org": "personal"} for name in buckets]))
        return 0
    print("NAME\tORG")
    for name in buckets:
        print(f"{name}\tpersonal")
    return 0


def storage_create(
    state: dict[str, Any], app: dict[str, Any] | None, name: str | None, *, yes: bool
) -> int:
    buckets: dict[str, str] = state.setdefault("buckets", {})
    if app is None or not name or not yes:
        return fail("stand-in: storage create wants an existing --app, --name and --yes")
    if name in buckets:
        return fail(f"bucket {name} already exists")
    buckets[name] = name
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "BUCKET_NAME"):
        app["secrets"][key] = md5(f"tigris-{key}")
    return 0


def positional(argv: list[str]) -> list[str]:
    words: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item in OPTIONS_WITH_VALUES:
            skip = True
        elif not item.startswith("-"):
            words.append(item)
    return words


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def md5(value: str) -> str:
    return hashlib.md5(value.encode()).hexdigest()


def shown(state: dict[str, Any], digest: str) -> str:
    return digest if state.get("digest", "md5") == "md5" else "v2:" + digest[:6]


def fail(message: str) -> int:
    print(f"Error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
