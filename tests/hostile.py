"""Hostile request bodies for the catalogue and the fuzz tests: lying ``.npy`` headers, zip bombs, huge archives."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np


def npy_header(shape: tuple[int, ...], descr: str = "<f2", version: tuple[int, int] = (1, 0)) -> bytes:
    """Just the ``.npy`` header of an array of ``shape``, as ``np.save`` writes it (no data)."""
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _local(name: bytes, crc: int, packed: int, size: int, method: int) -> bytes:
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, packed, size, len(name), 0) + name


def _central(name: bytes, crc: int, packed: int, size: int, method: int, offset: int) -> bytes:
    fields = (b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, packed, size, len(name), 0, 0, 0, 0, 0, offset)
    return struct.pack("<4s6H3L5HLL", *fields) + name


def zip_archive(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip of ``(name, data as stored, crc, inflated size, method)`` members, written by hand so a member may
    inflate to more than ``zipfile`` writes without zip64 (the 32-bit size fields hold up to 4 GiB)."""
    body, directory = b"", b""
    for name, data, crc, size, method in members:
        raw = name.encode()
        directory += _central(raw, crc, len(data), size, method, len(body))
        body += _local(raw, crc, len(data), size, method) + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), len(body), 0)
    return body + directory + end


def stored(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
    return name, data, zlib.crc32(data), len(data), 0


def deflated_zeros(name: str, head: bytes, zero_bytes: int, block: int = 1 << 20) -> tuple[str, bytes, int, int, int]:
    """A deflated member: ``head`` then ``zero_bytes`` zeros. Each block of zeros is compressed after a full flush,
    so one compressed block repeated stands for all of them (2 GiB of zeros become ~2 MB in well under a second)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(block)
    one = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert zero_bytes % block == 0
    data = first + one * (zero_bytes // block) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = zlib.crc32(head)
    for _ in range(zero_bytes // block):
        crc = zlib.crc32(zeros, crc)
    return name, data, crc, len(head) + zero_bytes, 8
