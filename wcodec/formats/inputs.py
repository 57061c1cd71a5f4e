"""Checks on input paths before they are opened."""

import os
import stat

from wcodec.errors import InputError


def check_regular_file(path, expected):
    """Raise InputError unless ``path`` is an existing regular file.

    ``os.stat`` does not block, whereas opening a FIFO for reading waits for a writer, so
    a named pipe given as input is rejected here instead of hanging. ``expected`` names
    the kind of file wanted, for the message.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a directory, expected {expected}")
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: is not a regular file, expected {expected}")
