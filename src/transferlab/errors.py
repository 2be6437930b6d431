"""Errors a user can cause: each says what was wrong, with which file or value, and what to do."""

from __future__ import annotations


class TransferlabError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""
