"""A dependency-free animated GIF writer for grayscale frames (the base install has no imageio).

Uncompressed GIF: 8-bit gray palette, LZW codes of a fixed 9 bits with a clear code before the
table would grow, so no dictionary is needed and numpy packs the bits. Frames are streamed to a
temporary file as they come (memory stays flat over a long episode) and the file is renamed into
place on close. ~1.1 bytes per pixel: a 96x96 episode of 2,000 steps is ~20 MB.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from dlswm.atomic import atomic_path

_CLEAR, _END = 256, 257
_RUN = 254  # literal codes between clear codes: keeps the decoder's table below 512 entries (9 bits)


def _lzw_9bit(pixels: np.ndarray) -> bytes:
    """LZW data for 8-bit pixels: [clear, 254 literals, clear, ...] as 9-bit codes, LSB first."""
    n = pixels.size
    runs = -(-n // _RUN)
    codes = np.full(n + runs + 1, _CLEAR, np.uint16)
    positions = np.arange(n) + np.arange(n) // _RUN + 1  # each run is preceded by one clear code
    codes[positions] = pixels.reshape(-1)
    codes[-1] = _END
    bits = ((codes[:, None] >> np.arange(9, dtype=np.uint16)) & 1).astype(np.uint8).reshape(-1)
    data = np.packbits(bits, bitorder="little").tobytes()
    blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255] for i in range(0, len(data), 255))
    return bytes([8]) + blocks + b"\x00"  # minimum code size 8, sub-blocks, terminator


class GifWriter:
    """`with GifWriter(path, (H, W)) as gif: gif.add(frame)`: the file appears whole on success."""

    def __init__(self, path: Path, shape: tuple[int, int], frame_ms: int = 40):
        self.path = Path(path)
        self.shape = shape
        self.delay = max(1, round(frame_ms / 10))
        self.frames = 0

    def __enter__(self) -> GifWriter:
        H, W = self.shape
        self._atomic = atomic_path(self.path)
        self.file = open(self._atomic.__enter__(), "wb")
        palette = np.repeat(np.arange(256, dtype=np.uint8), 3).tobytes()
        self.file.write(b"GIF89a" + struct.pack("<HHBBB", W, H, 0xF7, 0, 0) + palette
                        + b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00")  # loop forever
        return self

    def add(self, frame: np.ndarray) -> None:
        assert frame.shape == self.shape and frame.dtype == np.uint8, (frame.shape, frame.dtype)
        H, W = self.shape
        self.file.write(struct.pack("<BBBBHBB", 0x21, 0xF9, 4, 0, self.delay, 0, 0)  # frame delay
                        + b"\x2c" + struct.pack("<HHHHB", 0, 0, W, H, 0)  # image descriptor
                        + _lzw_9bit(np.ascontiguousarray(frame)))
        self.frames += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        self.file.write(b"\x3b")
        self.file.close()
        self._atomic.__exit__(exc_type, exc, tb)  # renamed into place on success, removed on an error
