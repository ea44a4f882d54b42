"""Fault injection for tests: networks, peers and disks that misbehave like production's."""
