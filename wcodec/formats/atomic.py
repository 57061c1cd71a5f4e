"""Output files that appear complete or not at all."""

from __future__ import annotations

import contextlib
import os
import stat
import secrets
from collections.abc import Iterator

from wcodec.errors import InputError

__all__ = ["atomic_output"]

_MAX_NAME_ATTEMPTS = 100


def _check_output_path(path: str, force: bool, inputs: tuple[str | os.PathLike[str], ...]) -> None:
    """Raise InputError unless `path` may be written as a new or replaced output file."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise InputError(f"cannot write output {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise InputError(f"output {path} is a directory; give a file path")

    real_path = os.path.realpath(path)
    for input_path in inputs:
        input_path = os.fspath(input_path)
        same = real_path == os.path.realpath(input_path)
        if not same and os.path.exists(path) and os.path.exists(input_path):
            # Also catches hard links and paths that differ only on a case-insensitive file system.
            same = os.path.samefile(path, input_path)
        if same:
            raise InputError(f"output {path} is the input; choose another path")

    # lexists is also true for a symlink whose target is missing, which os.replace would overwrite.
    if os.path.lexists(path) and not force:
        raise InputError(f"output {path} exists; pass --force to replace it")
    # --force replaces regular files only: renaming onto a device, FIFO or symbolic link
    # would replace the node itself (for example /dev/null) with a regular file.
    if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
        raise InputError(f"output {path} exists and is not a regular file; choose another path")


def _create_temporary_file(path: str) -> str:
    """Create an empty file next to `path` and return its name.

    os.open with mode 0o666 lets the umask set the permissions, so the finished output
    gets the same permissions as a file that open() creates.
    """
    directory, name = os.path.split(path)
    for _ in range(_MAX_NAME_ATTEMPTS):
        candidate = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as error:
            raise InputError(f"cannot create a temporary file next to {path}: {error.strerror or error}") from None
        os.close(descriptor)
        return candidate
    raise InputError(f"cannot create a temporary file next to {path}: {_MAX_NAME_ATTEMPTS} names were taken")


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str],
    *,
    force: bool,
    inputs: tuple[str | os.PathLike[str], ...] = (),
) -> Iterator[str]:
    """Yield a temporary path for writing `path`, and move the file into place on success.

    The temporary file exists, empty, in the same directory as `path`, so the final
    os.replace is a rename within one file system. When the body raises, the temporary
    file is removed and the exception propagates, so no partial output remains.

    Raises InputError before yielding when the directory of `path` does not exist,
    when `path` is a directory, when `path` is one of `inputs` (even with `force`),
    or when `path` exists and `force` is false.
    """
    path = os.fspath(path)
    _check_output_path(path, force, inputs)
    temporary = _create_temporary_file(path)
    try:
        yield temporary
    except BaseException:
        _remove_quietly(temporary)
        raise

    try:
        # fsync before the rename, so that after a crash `path` contains either the old
        # file or the complete new one.
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _remove_quietly(temporary)
        raise InputError(f"cannot move the finished output to {path}: {error.strerror or error}") from error
