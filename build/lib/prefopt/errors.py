"""Errors a user can act on: the CLI prints them as one line and exits 2 (``--debug`` shows the traceback)."""


class PrefoptError(Exception):
    """A problem with the user's input or environment, worded for the user."""
