"""Errors a user can act on. The CLI prints str(err) on one line and exits 2."""


class FsevError(Exception):
    """A one-line, user-facing error (bad input, missing privilege, kernel refusal)."""

    exit_code = 2
