"""First deploy and every redeploy of VoiceBridge on Fly.io, from `.env`.

    .venv/bin/python -m infra.deploy --app my-voicebridge [--dry-run]

Each step looks first and changes only what is missing or different, so rerunning is
safe and, when everything is already right, changes nothing:

1. flyctl is installed and logged in;
2. the app exists (`fly apps create`);
3. the Tigris bucket exists (`fly storage create`, which sets AWS_* and BUCKET_NAME);
4. the secrets from `.env` whose value Fly lacks are staged in one call
   (`fly secrets set --stage`: a plain `secrets set` restarts every machine);
5. one `fly deploy`, unless every machine already runs this commit's image and no
   secret changed;
6. the Twilio number points at https://<app>.fly.dev/twilio/voice
   (`voicebridge twilio point-number`, run locally with the Twilio credentials);
7. TRANSCRIPT_RETENTION_DAYS becomes the bucket's lifecycle rule
   (`voicebridge transcripts retention` on a machine: only machines hold the bucket keys).

Output marks: `ok` already right, `+` changed, `=` re-applied (a PUT of the same
value: idempotent, cheap, and it repairs a change made by hand), `-` skipped, `!` look.
No secret value is ever printed: only names.

`--dry-run` changes nothing and needs nothing installed: without flyctl (or its login)
it cannot look at Fly, so it plans as for a first deploy and says so; it ends with the
plan's summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from infra.envfile import NOT_STAGED, changed_secrets
from infra.fly import Fly, FlyError, field, names
from infra.options import DeployError, Options, parse_options

TWILIO_SETTINGS = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_PHONE_NUMBER")
INSTALL_FLYCTL = "https://fly.io/docs/flyctl/install/"


class Deployment:
    """The steps above, against one app; `dry_run` looks (where it can) but never changes."""

    def __init__(self, options: Options, fly: Fly | None, out: TextIO) -> None:
        self.options = options
        self._flyctl = fly
        self.out = out
        self.plan: list[str] = []

    def run(self) -> None:
        self.check_fly()
        app_exists = self.ensure_app()
        self.ensure_bucket()
        staged = self.stage_secrets(app_exists)
        self.deploy(app_exists, staged=staged)
        self.point_number()
        self.apply_retention()
        if self.options.dry_run:
            self.summarize()
        else:
            self.say("ok", f"done: {self.options.public_base_url}")

    @property
    def fly(self) -> Fly:
        """flyctl, once `check_fly` found it logged in (only a dry run goes on without)."""
        assert self._flyctl is not None
        return self._flyctl

    def check_fly(self) -> None:
        """flyctl must be able to look at Fly: a real run stops if not, a dry run plans blind."""
        if self._flyctl is None:
            problem = f"flyctl is not installed (no `fly` on PATH): see {INSTALL_FLYCTL}"
        elif not self._flyctl.succeeds("auth", "whoami"):
            problem = "flyctl is not logged in: run `fly auth login`"
        else:
            self.say("ok", "flyctl is logged in")
            return
        if not self.options.dry_run:
            raise DeployError(problem)
        self._flyctl = None
        self.say(
            "!",
            f"{problem}; so the dry run cannot look at Fly and plans a first deploy "
            "(a real run looks first and skips what already exists)",
        )

    def ensure_app(self) -> bool:
        """Create the app if missing; whether it exists now (a dry run creates nothing)."""
        app = self.options.app
        if self._flyctl is not None and app in names(self.fly.json("apps", "list", "--json")):
            self.say("ok", f"app {app} exists")
            return True
        self.change(
            ["apps", "create", app, "--org", self.options.org],
            f"create app {app} in org {self.options.org}",
        )
        return not self.options.dry_run

    def ensure_bucket(self) -> None:
        bucket = self.options.bucket
        if self._flyctl is not None and bucket in self.bucket_names():
            self.say("ok", f"bucket {bucket} exists")
            return
        # Created before the first deploy, its secrets are staged with the rest.
        self.change(
            ["storage", "create", "--app", self.options.app, "--name", bucket, "--yes"],
            f"create Tigris bucket {bucket} (sets AWS_* and BUCKET_NAME on the app)",
        )

    def bucket_names(self) -> set[str]:
        """Bucket names from `fly storage list` (JSON if this flyctl has it, else its table)."""
        try:
            return names(self.fly.json("storage", "list", "--json"))
        except FlyError:
            table = self.fly.text("storage", "list")
        rows = [line.split() for line in table.splitlines() if line.strip()]
        return {row[0] for row in rows if row[0].upper() != "NAME"}

    def stage_secrets(self, app_exists: bool) -> bool:
        """Stage every secret whose value Fly lacks, in one call; whether any was staged."""
        options = self.options
        desired = options.secrets
        for name, reason in sorted(options.skipped.items()):
            self.say("-", f"{name} not staged: {reason}")
        digests: dict[str, str] = {}
        if app_exists:
            for row in self.fly.json("secrets", "list", "--app", options.app, "--json") or []:
                digests[str(field(row, "name"))] = str(field(row, "digest") or "")
        extra = sorted(set(digests) - set(desired) - set(NOT_STAGED))
        if extra:
            self.say("!", f"on Fly but not in .env, left as they are: {', '.join(extra)}")
        changed = changed_secrets(desired, digests)
        if not changed:
            self.say("ok", f"secrets unchanged ({len(desired)})")
            return False
        self.change(
            ["secrets", "set", "--stage", "--app", options.app]
            + [f"{name}={value}" for name, value in sorted(changed.items())],
            f"stage {len(changed)} secret(s): {', '.join(sorted(changed))}",
            shown="secrets set --stage",
        )
        return True

    def deploy(self, app_exists: bool, *, staged: bool) -> None:
        options = self.options
        label = options.image_label
        running = self.running_labels() if app_exists else set()
        if label and running == {label} and not staged and not options.force_deploy:
            self.say("ok", f"every machine runs {label} with the current secrets: no deploy")
            return
        args = ["deploy", "--app", options.app, "--config", str(options.config), "--remote-only"]
        if label:
            args += ["--image-label", label]
        self.change(args, f"deploy {label or 'a new image'} (rolling, draining live calls)")

    def running_labels(self) -> set[str]:
        """The image tag of every machine of the app."""
        labels: set[str] = set()
        machines: Any = self.fly.json("machines", "list", "--app", self.options.app, "--json")
        for machine in machines or []:
            if field(machine, "state") == "destroyed":
                continue
            tag = field(field(machine, "image_ref") or {}, "tag")
            image = str(field(field(machine, "config") or {}, "image") or "")
            labels.add(str(tag or image.rpartition(":")[2]))
        return labels

    def point_number(self) -> None:
        env = self.options.env
        missing = [name for name in TWILIO_SETTINGS if not env.get(name)]
        if missing:
            self.say("-", f"Twilio number not pointed: set {', '.join(missing)} in .env")
            return
        url = self.options.webhook_url
        description = f"point {env['TWILIO_PHONE_NUMBER']} at {url}"
        dry = " [dry run: not done]" if self.options.dry_run else ""
        self.say("=", description + dry)
        self.plan.append(description)
        if dry:
            return
        command = [*self.options.voicebridge, "twilio", "point-number", url]
        child_env = {**os.environ, **env, "PUBLIC_BASE_URL": self.options.public_base_url}
        done = subprocess.run(command, cwd=self.options.project_dir, env=child_env, check=False)
        if done.returncode != 0:
            raise DeployError("`voicebridge twilio point-number` failed (see its output above)")

    def apply_retention(self) -> None:
        days = self.options.retention_days
        if days is None:
            self.say("-", "TRANSCRIPT_RETENTION_DAYS not set: transcripts are kept")
            return
        command = f"voicebridge transcripts retention --days {days}"
        self.change(
            ["ssh", "console", "--app", self.options.app, "--command", command],
            f"expire transcripts after {days} days (bucket lifecycle rule)",
            mark="=",
        )

    def change(
        self, args: list[str], description: str, *, shown: str | None = None, mark: str = "+"
    ) -> None:
        """Announce a change, then make it unless this is a dry run."""
        self.say(mark, description + (" [dry run: not done]" if self.options.dry_run else ""))
        self.plan.append(description)
        if not self.options.dry_run:
            self.fly.change(args, shown=shown or " ".join(args[:2]))

    def summarize(self) -> None:
        """The dry run's last word: what a real run would change, and that nothing did."""
        steps = self.plan or ["nothing: everything is already as .env and fly.toml say"]
        print(f"\nPlan for {self.options.app} (dry run: nothing was changed):", file=self.out)
        for number, step in enumerate(steps, 1):
            print(f"  {number}. {step}", file=self.out)
        if self.plan:
            print("Run it without --dry-run to apply the plan.", file=self.out, flush=True)

    def say(self, mark: str, text: str) -> None:
        print(f"{mark:>2}  {text}", file=self.out, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_options(argv)
        Deployment(options, Fly.find(options.project_dir, options.fly), sys.stdout).run()
    except (DeployError, FlyError) as error:
        print(f"deploy: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
