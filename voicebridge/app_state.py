"""What the routers share, kept on `app.state` by `create_app`: one app's calls never see
another's (tests build many). Handlers take Litestar's `state` and read it through these
typed accessors (named dependencies would need Litestar 2.23; we support 2.13)."""

from __future__ import annotations

from litestar.datastructures import State

from voicebridge.call.stream import CallServices
from voicebridge.telephony.control import TwilioCallControl


def app_state(services: CallServices, twilio: TwilioCallControl | None) -> State:
    return State({"services": services, "twilio": twilio})


def call_services(state: State) -> CallServices:
    services: CallServices = state.services
    return services


def twilio_control(state: State) -> TwilioCallControl | None:
    """Twilio's REST API for AMD and outbound calls; None without the account's credentials."""
    twilio: TwilioCallControl | None = state.twilio
    return twilio
