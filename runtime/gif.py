"""A dependency-free animated GIF writer for grayscale frames (the base install has no imageio).

Uncompressed GIF: 8-bit gray palette, LZW codes of a fixed 9 bits with a clear code before the
table would grow, so no dictionary is needed and numpy packs the bits. Files are ~1.1 bytes per
pixel: a 96x96 Atari episode of 2,000 steps is ~20 MB.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from dlswm.atomic import atomic_write_bytes

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


def write_gif(frames: np.ndarray, path: Path, frame_ms: int = 40) -> None:
    """frames uint8 (T, H, W) -> an animated, looping GIF; written to a temp file and renamed."""
    T, H, W = frames.shape
    palette = np.repeat(np.arange(256, dtype=np.uint8), 3).tobytes()
    parts = [b"GIF89a", struct.pack("<HHBBB", W, H, 0xF7, 0, 0), palette,
             b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"]  # loop forever
    delay = max(1, round(frame_ms / 10))
    for frame in frames:
        parts.append(struct.pack("<BBBBHBB", 0x21, 0xF9, 4, 0, delay, 0, 0))  # graphic control: delay
        parts.append(b"\x2c" + struct.pack("<HHHHB", 0, 0, W, H, 0))  # image descriptor, global palette
        parts.append(_lzw_9bit(np.ascontiguousarray(frame)))
    parts.append(b"\x3b")
    atomic_write_bytes(path, b"".join(parts))
