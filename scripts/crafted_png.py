"""PNG files written chunk by chunk, for the hostile inputs Pillow will not make itself
(a decompression bomb, malformed palettes): shared by the serving tests and benchmarks."""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb_png(side: int = 30_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels: ~100 KB that would decode to 900 MB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    pixels = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (
        SIGNATURE
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + png_chunk(b"IDAT", pixels)
        + png_chunk(b"IEND", b"")
    )
