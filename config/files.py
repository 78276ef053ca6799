"""Reading a file a person named (the accounts file, a token file) without ever hanging or
exhausting memory: regular files only, at most a known number of bytes.

``Path.read_text`` would wait forever on a FIFO nobody writes to, read /dev/zero until memory
runs out, and follow a path to a terminal or a socket. Here the path is checked before it is
opened (so no device is opened at all), opened without blocking (a FIFO swapped in after the
check opens at once instead of waiting for a writer), checked again on the open descriptor, and
read up to one byte past the limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from config.errors import show

# Paths are shown longer than other values: their end is what tells them apart.
PATH_LIMIT = 200


class FileProblem(ValueError):
    """Why a file could not be read, in one line that names it."""


class FileTooLarge(FileProblem):
    """The file holds more bytes than the reader takes."""


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_bounded(path: Path | str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, or FileProblem (one line)."""
    name = show(str(path), PATH_LIMIT)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        mode = os.stat(path).st_mode  # follows symlinks, as secrets mounted by k8s are
        if not stat.S_ISREG(mode):
            raise FileProblem(f"{name} is {_kind(mode)}, not a regular file")
        descriptor = os.open(path, flags)
    except FileProblem:
        raise
    except FileNotFoundError:
        raise FileProblem(f"{name} does not exist") from None
    except PermissionError:
        raise FileProblem(f"{name} cannot be read (permission denied)") from None
    except OSError as error:
        raise FileProblem(f"{name} cannot be read ({error.strerror or 'error'})") from None
    except ValueError:  # a NUL character in the path
        raise FileProblem(f"{name} is not a usable path") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):  # replaced between the check and the open
            raise FileProblem(f"{name} is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise FileTooLarge(
                f"{name} is {info.st_size:,} bytes, larger than the {limit:,} bytes allowed"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            # As much as the file holds and a byte more (to see it grew), not the limit: a read
            # allocates all it asks for, and a large limit is no reason to ask for that much.
            wanted = max(info.st_size + 1 - size, size, 64 * 1024)
            chunk = os.read(descriptor, min(wanted, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # it grew after the fstat
            raise FileTooLarge(f"{name} is larger than the {limit:,} bytes allowed")
        return b"".join(chunks)
    except OSError as error:
        raise FileProblem(f"{name} cannot be read ({error.strerror or 'error'})") from None
    finally:
        os.close(descriptor)
