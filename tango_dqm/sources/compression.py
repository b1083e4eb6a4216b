"""Decoding of compressed frame payloads: ``decode(buffer, compression, shape, dtype)``.

Compressions (names as they appear on the wire):

``none``
    raw C-order bytes; wrapped zero-copy (``np.frombuffer``).
``bslz4`` (alias ``bitshuffle_lz4``, bsread's name)
    bitshuffle + LZ4 as Dectris, STINS and bsread send it and as the HDF5 bitshuffle
    filter stores a chunk: a 12-byte header (uint64 big-endian uncompressed size in
    bytes, uint32 big-endian block size in *bytes*), then the output of
    ``bitshuffle.compress_lz4``: per block a uint32 big-endian compressed size and the
    LZ4 block, then the ``size % 8`` trailing elements copied raw.
``lz4``
    one LZ4 block of the raw bytes, no header (Dectris ``lz4<``); the size comes from
    shape and dtype.
``lz4_sized``
    bsread's ``lz4``: a uint32 little-endian uncompressed size, then one LZ4 block.

Corrupt or inconsistent data raises :class:`CompressionError`, whose ``kind`` the sources
count as the BadInput kind: ``corrupt_compressed`` (framing or LZ4 data broken),
``bad_decoded_size`` (:class:`DecodedSizeError`: a declared uncompressed size that differs
from what shape and dtype need, or that LZ4 could not produce from so few bytes),
``size_mismatch`` (:class:`SizeMismatch`: an uncompressed part of the wrong length),
``frame_too_large`` (shape and dtype need more than ``max_bytes``, default
:data:`tango_dqm.frames.MAX_FRAME_BYTES`); an unknown name raises
:class:`UnsupportedCompression`. Every size is checked *before* the output is allocated,
so a 40-byte message cannot make the decoder reserve gigabytes: LZ4 expands at most
255-fold (a match costs at least one byte per 255 bytes it produces), so a part that
declares more than ``255 x`` its own length is refused unread. The bitshuffle block framing is checked against the
buffer length *before* bitshuffle runs, because ``bshuf_decompress_lz4`` is not told the
input length and would read past the end of a truncated buffer.

Threads: the ``bitshuffle`` wheel bundles its own OpenMP runtime and decodes with one
thread per core by default. On a 2-core machine those threads compete with the receive
and analysis threads (and spin after each call), so :func:`limit_threads` caps
bitshuffle's OpenMP team at ``TANGO_DQM_BITSHUFFLE_THREADS`` (default 1; ``0`` leaves
OpenMP alone). The cap is an OpenMP per-thread setting: :func:`decode` applies it once
in every thread that decodes. It only touches the bundled runtime of bitshuffle
(through ``omp_set_num_threads`` resolved from its extension module), never
``OMP_NUM_THREADS``, so numba, BLAS and other OpenMP users keep their own settings.
"""
from __future__ import annotations

import ctypes
import logging
import math
import os
import struct
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..frames import MAX_FRAME_BYTES

log = logging.getLogger(__name__)

#: wire names -> canonical names
ALIASES = {"none": "none", "": "none", "bslz4": "bslz4", "bitshuffle_lz4": "bslz4", "lz4": "lz4",
           "lz4_sized": "lz4_sized"}
COMPRESSIONS = ("none", "bslz4", "lz4", "lz4_sized")

_BE_U64_U32 = struct.Struct(">QI")
_BE_U32 = struct.Struct(">I")
_LE_U32 = struct.Struct("<I")
_BSHUF_BLOCKED_MULT = 8
_BSHUF_TARGET_BLOCK_BYTES = 8192
_BSHUF_MIN_BLOCK = 128
#: LZ4 cannot produce more than this many bytes per compressed byte
LZ4_MAX_RATIO = 255


class CompressionError(ValueError):
    """A compressed payload is corrupt or does not match its declared shape and dtype."""

    #: the BadInput kind a source counts this error under
    kind = "corrupt_compressed"


class DecodedSizeError(CompressionError):
    """A declared uncompressed size is inconsistent with the shape or cannot be produced by LZ4."""

    kind = "bad_decoded_size"


class FrameTooLarge(CompressionError):
    """The shape and dtype need more bytes than the configured limit."""

    kind = "frame_too_large"


class SizeMismatch(CompressionError):
    """An uncompressed part whose length is not what shape and dtype need."""

    kind = "size_mismatch"


class UnsupportedCompression(CompressionError):
    """The compression name is not one this module decodes."""

    kind = "unsupported_compression"


def _check_expansion(expected: int, compressed: int, what: str) -> None:
    if expected > LZ4_MAX_RATIO * compressed:
        raise DecodedSizeError(f"{what} of {compressed} bytes cannot decode to the {expected} bytes the shape "
                               f"needs (LZ4 expands at most {LZ4_MAX_RATIO}x): truncated or forged")


def canonical(compression: str | None) -> str:
    """The canonical name for a wire name (``None`` means ``none``); raises UnsupportedCompression."""
    if compression is None:
        return "none"
    try:  # a non-string, even a falsy one (0, false, []), is not a compression name
        return ALIASES[compression.lower()]
    except (KeyError, AttributeError):
        raise UnsupportedCompression(f"unsupported compression {compression!r}; "
                                     f"supported: {sorted(ALIASES)}") from None


# ---- bitshuffle thread cap ------------------------------------------------------------

_tls = threading.local()
_omp_lock = threading.Lock()
_omp_set: Any = None  # ctypes function, False when unavailable, None when not looked up


def _thread_cap() -> int:
    raw = os.environ.get("TANGO_DQM_BITSHUFFLE_THREADS", "1")
    try:
        return max(0, int(raw))
    except ValueError:
        log.warning("TANGO_DQM_BITSHUFFLE_THREADS=%r is not an integer; using 1", raw)
        return 1


def _omp_set_num_threads() -> Any:
    global _omp_set
    with _omp_lock:
        if _omp_set is None:
            _omp_set = False
            try:
                import bitshuffle.ext as ext  # noqa: PLC0415 - optional at import time
                # dlsym on the extension's handle searches it and its dependencies, i.e.
                # the OpenMP runtime bundled with (and used by) bitshuffle.
                fn = ctypes.CDLL(ext.__file__).omp_set_num_threads
                fn.argtypes, fn.restype = [ctypes.c_int], None
                _omp_set = fn
            except (ImportError, OSError, AttributeError) as exc:
                log.info("bitshuffle OpenMP thread cap not applied: %s", exc)
        return _omp_set


def limit_threads(cap: int | None = None) -> int | None:
    """Cap bitshuffle's OpenMP threads for the calling thread.

    Without ``cap`` the cap comes from ``TANGO_DQM_BITSHUFFLE_THREADS`` and is applied
    once per thread (later calls are cheap no-ops); an explicit ``cap`` is always applied.
    Returns the cap in force, or None when none was applied (cap 0 or no OpenMP runtime).
    """
    if cap is None:
        done = getattr(_tls, "cap", -1)
        if done != -1:
            return done
        cap = _thread_cap()
    applied = None
    if cap:
        fn = _omp_set_num_threads()
        if fn:
            fn(cap)
            applied = cap
    _tls.cap = applied
    return applied


# ---- decoders ------------------------------------------------------------------------


def _as_u8(buffer: Any) -> np.ndarray:
    if isinstance(buffer, np.ndarray):
        return buffer.reshape(-1).view(np.uint8)
    return np.frombuffer(buffer, dtype=np.uint8)


def check_bitshuffle_framing(raw: np.ndarray, n_elements: int, itemsize: int, block_elements: int) -> None:
    """Walk the block headers of a bitshuffle-LZ4 stream (without the 12-byte header).

    Raises CompressionError unless the blocks exactly fill ``raw``. This is what keeps
    bitshuffle from reading past the end of a truncated or forged buffer.
    """
    mv = raw.data
    total = raw.nbytes
    pos = 0
    unpack = _BE_U32.unpack_from
    n_full, rest = divmod(n_elements, block_elements)
    last = rest - rest % _BSHUF_BLOCKED_MULT
    for index in range(n_full + (1 if last else 0)):
        if pos + 4 > total:
            raise CompressionError(f"bitshuffle block {index} header at byte {pos + 12} is past the end "
                                   f"of the {total + 12}-byte payload (truncated)")
        (size,) = unpack(mv, pos)
        pos += 4 + size
        if pos > total:
            raise CompressionError(f"bitshuffle block {index} claims {size} bytes, past the end of the "
                                   f"{total + 12}-byte payload (truncated or corrupt)")
    leftover = (n_elements % _BSHUF_BLOCKED_MULT) * itemsize
    if pos + leftover != total:
        raise CompressionError(f"bitshuffle payload is {total + 12} bytes but its blocks account for "
                               f"{pos + leftover + 12} (corrupt or trailing bytes)")


def _decode_bslz4(raw: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if raw.nbytes < 12:
        raise CompressionError(f"bslz4 payload of {raw.nbytes} bytes is shorter than its 12-byte header")
    total, block_bytes = _BE_U64_U32.unpack_from(raw.data, 0)
    n_elements = math.prod(shape)
    expected = n_elements * dtype.itemsize
    if total != expected:
        raise DecodedSizeError(f"bslz4 header says {total} uncompressed bytes, shape {list(shape)} "
                               f"{dtype.name} needs {expected}")
    _check_expansion(expected, raw.nbytes - 12, "bslz4 body")
    if block_bytes == 0:
        block = max(_BSHUF_TARGET_BLOCK_BYTES // dtype.itemsize // _BSHUF_BLOCKED_MULT * _BSHUF_BLOCKED_MULT,
                    _BSHUF_MIN_BLOCK)
    else:
        block, bad = divmod(block_bytes, dtype.itemsize)
        if bad or block == 0 or block % _BSHUF_BLOCKED_MULT:
            raise CompressionError(f"bslz4 block size {block_bytes} bytes is not a positive multiple of "
                                   f"{_BSHUF_BLOCKED_MULT} {dtype.name} elements")
    body = raw[12:]
    check_bitshuffle_framing(body, n_elements, dtype.itemsize, block)
    limit_threads()
    import bitshuffle  # noqa: PLC0415 - imported on first use

    try:
        out = bitshuffle.decompress_lz4(body, tuple(shape), dtype, block)
    except (RuntimeError, ValueError) as exc:
        raise CompressionError(f"bslz4 decoding failed: {exc}") from None
    return out


def _decode_lz4(raw: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, sized: bool) -> np.ndarray:
    import lz4.block  # noqa: PLC0415 - imported on first use

    expected = math.prod(shape) * dtype.itemsize
    if sized:
        if raw.nbytes < 4:
            raise CompressionError(f"lz4 payload of {raw.nbytes} bytes is shorter than its 4-byte size header")
        (declared,) = _LE_U32.unpack_from(raw.data, 0)
        if declared != expected:
            raise DecodedSizeError(f"lz4 header says {declared} uncompressed bytes, shape {list(shape)} "
                                   f"{dtype.name} needs {expected}")
        raw = raw[4:]
    _check_expansion(expected, raw.nbytes, "lz4 block")
    try:
        out = lz4.block.decompress(raw.data, uncompressed_size=expected)
    except lz4.block.LZ4BlockError as exc:
        raise CompressionError(f"lz4 decoding failed: {exc}") from None
    if len(out) != expected:
        raise CompressionError(f"lz4 block decodes to {len(out)} bytes, shape {list(shape)} "
                               f"{dtype.name} needs {expected}")
    return np.frombuffer(out, dtype=dtype).reshape(shape)


def decode(buffer: Any, compression: str | None, shape: Sequence[int], dtype: Any,
           max_bytes: int = MAX_FRAME_BYTES) -> np.ndarray:
    """Decode ``buffer`` (bytes, memoryview, zmq buffer or uint8 array) into an array.

    ``none`` wraps the buffer without copying (read-only when the buffer is); the other
    compressions return a new array of at most ``max_bytes``. Raises CompressionError
    (with its ``kind``) on corrupt or oversized data and UnsupportedCompression for an
    unknown name.
    """
    name = canonical(compression)
    dtype = np.dtype(dtype)
    shape = tuple(int(v) for v in shape)
    if any(v <= 0 for v in shape):
        raise CompressionError(f"shape {list(shape)} has a dimension that is not positive")
    expected = math.prod(shape) * dtype.itemsize
    if expected > max_bytes:
        raise FrameTooLarge(f"shape {list(shape)} {dtype.name} needs {expected} bytes, more than the limit "
                            f"of {max_bytes}")
    raw = _as_u8(buffer)
    if name == "none":
        if raw.nbytes != expected:
            raise SizeMismatch(f"{raw.nbytes} bytes for shape {list(shape)} {dtype.name}, expected {expected}")
        return raw.view(dtype).reshape(shape)
    if name == "bslz4":
        return _decode_bslz4(raw, shape, dtype)
    return _decode_lz4(raw, shape, dtype, sized=name == "lz4_sized")


def encode_bslz4(array: np.ndarray, block_elements: int = 0) -> bytes:
    """Encode like a Dectris/STINS/bsread sender (12-byte header + bitshuffle LZ4). For tests and simulators."""
    import bitshuffle  # noqa: PLC0415

    array = np.ascontiguousarray(array)
    if not block_elements:
        block_elements = max(_BSHUF_TARGET_BLOCK_BYTES // array.itemsize // _BSHUF_BLOCKED_MULT
                             * _BSHUF_BLOCKED_MULT, _BSHUF_MIN_BLOCK)
    body = bitshuffle.compress_lz4(array, block_elements)
    return _BE_U64_U32.pack(array.nbytes, block_elements * array.itemsize) + body.tobytes()


__all__ = ["COMPRESSIONS", "LZ4_MAX_RATIO", "CompressionError", "DecodedSizeError", "FrameTooLarge",
           "SizeMismatch", "UnsupportedCompression", "canonical", "check_bitshuffle_framing", "decode", "encode_bslz4",
           "limit_threads"]
