"""A user's tool module, as AGENT_TOOLS=tests.tools_example.restaurant would name it."""

import asyncio
from typing import Literal


def check_availability(party_size: int, time: str, area: Literal["inside", "terrace"]) -> str:
    """Check whether a table is free for the party at the given time (HH:MM)."""
    return f"a table for {party_size} is free at {time} ({area})"


async def cancel_booking(booking_id: str) -> dict[str, str]:
    """Cancel an existing booking by its id."""
    await asyncio.sleep(0)
    if not booking_id.startswith("B"):
        raise ValueError(f"no booking {booking_id}")
    return {"cancelled": booking_id}


async def slow_lookup(name: str) -> str:
    """Look a regular customer up (slow on purpose, to test the timeout)."""
    await asyncio.sleep(30)
    return name
