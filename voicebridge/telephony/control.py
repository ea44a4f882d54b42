"""Acting on a live call through Twilio's REST API: hang up, transfer.

Blocking SDK calls; the bridge runs them in a thread, off the audio path.
"""

from __future__ import annotations

import logging

from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from voicebridge.telephony.twiml import say_and_hang_up

log = logging.getLogger("voicebridge.twilio")

ALREADY_OVER = 20404  # "The requested resource was not found": the call has ended


class TwilioCallControl:
    def __init__(self, client: Client) -> None:
        self.client = client

    def hang_up(self, call_sid: str) -> None:
        self._update(call_sid, status="completed")

    def transfer(self, call_sid: str, number: str) -> None:
        """Redirecting the call ends our stream (Twilio sends `stop`): that is expected."""
        self._update(call_sid, twiml=transfer_twiml(number))

    def leave_voicemail(self, call_sid: str, message: str) -> bool:
        """Speak `message` to the answering machine after its beep, then hang up.

        The redirect replaces the media stream, so the agent stops talking to the
        machine. False if the call was already over (nothing was left).
        """
        return self._update(call_sid, twiml=say_and_hang_up(message))

    def _update(self, call_sid: str, **changes: str) -> bool:
        """Apply `changes`; False if the call had already ended (not an error)."""
        try:
            self.client.calls(call_sid).update(**changes)
        except TwilioRestException as error:
            if error.status == 404 or error.code == ALREADY_OVER:
                log.info("the call had already ended")
                return False
            raise
        return True


def transfer_twiml(number: str) -> str:
    response = VoiceResponse()
    response.dial(number)
    return str(response.to_xml())
