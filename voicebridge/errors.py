"""Errors every command group raises: here, not in `cli`, so the groups need not import
the module that imports them."""


class CommandError(Exception):
    """A command failed for a reason the user can fix; printed as one line, exit 1."""
