"""Files appear whole or not at all: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from dlswm.errors import UserError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` for a writer to write to: synced and renamed to `path` when the
    block ends normally, removed when it raises. The suffix is kept (`x.tmp.png`): writers such as
    matplotlib and imageio pick the format by it."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # what follows (a checkpoint) must never point at a torn file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(fig: Any, path: Path, dpi: int) -> Path:
    """A matplotlib figure to `path`, whole or not at all, and closed either way."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def check_writable(path: Path, what: str) -> Path:
    """Fail before the work, not after it: write and remove a small probe file beside the target.
    (`os.access` says yes to root on a read-only place such as /proc, and knows nothing of a full disk.)"""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{what} {path}: cannot write into {folder}: no such folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.probe") as f:
            f.write(bytes(PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise UserError(f"{what} {path}: cannot write into {folder} ({e.strerror or type(e).__name__})") from None
    return path


PROBE_BYTES = 64 * 1024  # a full disk refuses this much even where it still takes an empty file


def check_outputs(outputs: dict[str, Path | None]) -> None:
    """`check_writable` for each output option given ({"--json": path or None, ...})."""
    for what, path in outputs.items():
        if path is not None:
            check_writable(path, what)


def write_result(path: Path, data: bytes, what: str) -> None:
    """Write a result at the end of the work; if that fails now (the disk filled up meanwhile), say
    so in one line: the results themselves are already on the screen."""
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise UserError(f"{what} {path}: could not write it ({e.strerror or type(e).__name__}); "
                        "the results are printed above", code=1) from None
