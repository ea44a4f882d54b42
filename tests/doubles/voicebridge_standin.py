"""A stand-in for the local `voicebridge` CLI, run from PATH by the deploy-script tests.

Appends `{"argv": [...], "twilio_env": [...]}` to `VOICEBRIDGE_STANDIN_LOG`: the
arguments, and which Twilio settings reached it (names only) — the deploy script must
hand the `.env` credentials to `voicebridge twilio point-number`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    seen = sorted(name for name in os.environ if name.startswith("TWILIO_"))
    with Path(os.environ["VOICEBRIDGE_STANDIN_LOG"]).open("a") as log:
        log.write(json.dumps({"argv": sys.argv[1:], "twilio_env": seen}) + "\n")
