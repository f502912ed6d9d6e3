"""The one exception the package raises for bad input."""

from __future__ import annotations


class SourceError(Exception):
    """A trace source could not be read: the message is one line meant for the user.

    >>> str(SourceError("no traces-*.jsonl under /nowhere"))
    'no traces-*.jsonl under /nowhere'
    """
