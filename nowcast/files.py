"""Files written whole or not at all.

Every file the project publishes (forecasts, manifests, model records, figures, checkpoints,
downloads) is written under a temporary name beside its place and renamed onto it once
complete. A rename within one folder is atomic, so a reader sees the old file or the whole
new one, never a part, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: published files are readable by everyone, as a plain ``open`` under the usual umask makes them
PUBLISHED_MODE = 0o644


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike[str], *, suffix: str = ".tmp") -> Iterator[Path]:
    """A new empty file beside ``path`` for the block to write; renamed onto ``path`` when it ends.

    If the block raises, the temporary file is removed and ``path`` is untouched. The file is
    flushed to disk before the rename, so that a crash cannot leave an empty file in its place.
    Its name starts with a dot and ends with ``suffix``, so that folder watchers pass it over.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _flush_to_disk(tmp)
        os.chmod(tmp, PUBLISHED_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) whole or not at all."""
    path = Path(path)
    with replaced_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _flush_to_disk(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
