"""Exceptions that wcodec raises for bad input.

The command line prints the message of any `WcodecError` as one line on stderr.
A damaged or malicious `.wbs` file raises `WbsFormatError` (exit status 2);
every other rejected input raises `InputError` (exit status 1).
"""


class WcodecError(Exception):
    """Base class of the errors whose message is meant for the user."""


class InputError(WcodecError, ValueError):
    """An input that wcodec rejects: a missing file, an unsupported tensor, an existing output."""


class WbsFormatError(WcodecError, ValueError):
    """A `.wbs` file that breaks the bitstream specification (truncated, corrupt or hostile)."""
