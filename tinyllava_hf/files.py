"""Writing outputs so that nothing is lost: every file and folder the package writes goes through these helpers.

A reader never sees a half-written file, an interrupted write leaves the previous version intact, and a folder
output is built beside its destination and moved into place only when complete.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike


def packaged_file(relative: str) -> Path:
    """A file the package reads at run time, shipped under `tinyllava_hf/resources/` (e.g. `model_card_template.md`).

    In a checkout each entry there is a link to the file's one copy at the repository's top level (where people read
    and edit it); a built wheel carries the file itself. Either way this returns a real path on disk.
    """
    resource = importlib.resources.files("tinyllava_hf").joinpath("resources", *relative.split("/"))
    if not resource.is_file():
        raise FileNotFoundError(
            f"{relative} is missing from the installed tinyllava_hf package ({resource}); reinstall tinyllava-hf."
        )
    return Path(os.fspath(resource))


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (temporary file in the same folder, fsync, `os.replace`); returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: PathLike, data: Any) -> Path:
    """Write `data` as indented JSON (UTF-8, trailing newline) to `path` atomically; returns `path`.

    The text is serialised before anything touches the disk, so data that cannot be serialised leaves no trace.
    """
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return write_text_atomic(path, text)


class OutputExistsError(FileExistsError):
    """An output folder already holds something and the caller did not allow replacing it."""


def check_destination(dst: PathLike, overwrite: bool, error: type[Exception] = OutputExistsError) -> None:
    """Fail early (before any heavy work) when `dst` holds something and may not be replaced.

    `error` lets a command raise its own error type (e.g. `ConversionError`), which its CLI reports in one line.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite and (not dst.is_dir() or any(dst.iterdir())):
        raise error(f"Destination {dst} already exists and is not empty (pass overwrite to replace it).")


@contextlib.contextmanager
def atomic_output_dir(
    dst: PathLike, overwrite: bool = False, error: type[Exception] = OutputExistsError
) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `dst`; on success it replaces `dst`, on failure it is deleted.

    A failed write therefore never leaves a half-written destination behind.
    """
    dst = Path(dst).absolute()
    check_destination(dst, overwrite, error)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        yield tmp
        if dst.exists():
            # Move the old folder aside first so that `dst` is never missing a complete version for long.
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
            old.rmdir()
            dst.rename(old)
            tmp.rename(dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_not_overlapping(
    source: PathLike, destination: PathLike, error: type[Exception] = OutputExistsError, what: str = "source"
) -> None:
    """Refuse a `destination` that is `source`, lies inside it or contains it, whatever `overwrite` says.

    Writing there would replace (or, through `atomic_output_dir`'s final swap, delete) the input being read. Cheap
    and path-only: call it before any heavy work. A `source` that is not a local path (a Hub id) never overlaps.
    """
    src = Path(source).expanduser()
    if not src.exists():
        return
    src, dst = src.resolve(), Path(destination).expanduser().resolve()
    if dst == src:
        problem = "is the same folder as"
    elif dst.is_relative_to(src):
        problem = "is inside"
    elif src.is_relative_to(dst):
        problem = "contains"
    else:
        return
    raise error(f"Output {destination} {problem} the {what} {source}: it would be overwritten; choose another output.")
