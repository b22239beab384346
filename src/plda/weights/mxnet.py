"""Read and write MXNet ``.params`` files with numpy alone (no mxnet install).

Layout (little-endian), as written by apache/mxnet ``NDArray::Save`` (``src/ndarray/ndarray.cc``)::

    uint64 0x112, uint64 0 (reserved), uint64 N, N x array, uint64 K, K x (uint64 len, name bytes)

Each array starts with a uint32 that selects one of four record layouts:

- ``0xF993fac9`` (V2) / ``0xF993faca`` (V3, numpy shape semantics): int32 storage type,
  int32 ndim, ndim x int64 dims;
- ``0xF993fac8`` (V1): int32 ndim, ndim x int64 dims;
- anything else (legacy): that value *is* ndim, followed by ndim x uint32 dims.

then int32 device type, int32 device id, int32 dtype flag and the raw C-order data. In V2, V1 and
legacy records ndim 0 means "no array" and nothing follows; V3 uses ndim -1 for that, so ndim 0
is a real 0-d scalar there. K is either N or 0 (an unnamed list).

The reader parses one in-memory buffer with explicit bounds checks: every count, ndim, dim and
name length is checked against the bytes that remain *before* anything is allocated, and any
malformed, truncated or foreign input raises :class:`~plda.errors.WeightsError` naming the file,
the byte offset and what was expected there.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from plda.errors import WeightsError
from plda.utils.io import atomic_write

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
_VERSION_MAGIC = {"v1": V1_MAGIC, "v2": V2_MAGIC, "v3": V3_MAGIC}
VERSIONS = ("legacy", "v1", "v2", "v3")

# mshadow TypeFlag -> little-endian numpy dtype. 12 (bfloat16) has no numpy equivalent.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
    8: np.dtype("<i2"),
    9: np.dtype("<u2"),
    10: np.dtype("<u4"),
    11: np.dtype("<u8"),
}
_FLAGS = {dt.newbyteorder("<"): flag for flag, dt in _DTYPES.items()}
_STORAGE_NAMES = {1: "row_sparse", 2: "csr"}
_DEVICE_TYPES = (1, 2, 3, 5)  # cpu, gpu, cpu_pinned, cpu_shared (mxnet Context::DeviceType)
# numpy's own limit on dimensions; also the bound that makes a foreign file's first word fail fast.
MAX_NDIM = 32
PREFIXES = ("arg:", "aux:")


class _Cursor:
    """A bounds-checked little-endian reader over one buffer."""

    def __init__(self, data: bytes | bytearray, path: str) -> None:
        self.data = data
        self.view = memoryview(data)
        self.pos = 0
        self.path = path

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def fail(self, what: str, at: int | None = None) -> WeightsError:
        at = self.pos if at is None else at
        return WeightsError(f"{self.path}: malformed MXNet .params file at byte {at}: {what}")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining:
            raise self.fail(f"expected {what} ({n} bytes) but only {self.remaining} bytes remain")
        chunk = self.view[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def scalar(self, fmt: str, what: str) -> int:
        return self.unpack(fmt, what)[0]


def _read_array(cur: _Cursor, index: int) -> np.ndarray:
    start = cur.pos
    label = f"array #{index}"
    magic = cur.scalar("I", f"{label} magic or legacy ndim (uint32)")
    if magic in (V2_MAGIC, V3_MAGIC):
        stype = cur.scalar("i", f"{label} storage type (int32)")
        if stype != 0:
            kind = _STORAGE_NAMES.get(stype)
            what = f"sparse storage '{kind}'" if kind else f"unknown storage type {stype}"
            raise cur.fail(f"{label} uses {what}; only dense storage (0) is supported", cur.pos - 4)
    if magic in (V1_MAGIC, V2_MAGIC, V3_MAGIC):
        ndim_at = cur.pos
        ndim = cur.scalar("i", f"{label} ndim (int32)")
        if magic == V3_MAGIC and ndim == -1:
            return np.empty((0,), np.float32)  # unknown shape: mxnet's "none" array
        dim_fmt = "q"
    else:
        ndim_at, ndim, dim_fmt = start, magic, "I"
    if not 0 <= ndim <= MAX_NDIM:
        raise cur.fail(
            f"{label}: expected an NDArray magic (0xF993FAC8/9/A) or ndim in 0..{MAX_NDIM}, "
            f"found {ndim} (0x{ndim & 0xFFFFFFFF:08X})",
            ndim_at,
        )
    if ndim == 0 and magic != V3_MAGIC:
        return np.empty((0,), np.float32)  # ndim 0 = "none" array outside numpy semantics
    dims_at = cur.pos
    shape = cur.unpack(f"{ndim}{dim_fmt}", f"{label} dims")
    if any(d < 0 for d in shape):
        if magic == V3_MAGIC and all(d >= -1 for d in shape):
            return np.empty((0,), np.float32)  # a -1 dim is unknown: also "none" in V3
        raise cur.fail(f"{label}: negative dimension in shape {shape}", dims_at)
    ctx_at = cur.pos
    dev_type, _dev_id, flag = cur.unpack("iii", f"{label} device type, device id, dtype (3 x int32)")
    if dev_type not in _DEVICE_TYPES:
        raise cur.fail(f"{label}: expected a device type in {_DEVICE_TYPES}, found {dev_type}", ctx_at)
    dtype = _DTYPES.get(flag)
    if dtype is None:
        raise cur.fail(f"{label}: unsupported dtype flag {flag} (supported: {sorted(_DTYPES)})",
                       ctx_at + 8)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > cur.remaining:
        raise cur.fail(f"{label}: shape {shape} of {dtype.name} needs {nbytes} bytes of data, "
                       f"only {cur.remaining} remain")
    data_at = cur.pos
    raw = cur.take(nbytes, f"{label} data")
    try:
        arr = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
    except ValueError:  # e.g. an empty array whose other dims overflow numpy's size limit
        raise cur.fail(f"{label}: shape {shape} is not a valid array shape", data_at) from None
    if dtype.kind == "b" and count and np.frombuffer(raw, np.uint8).max() > 1:
        raise cur.fail(f"{label}: boolean data holds bytes other than 0 and 1", data_at)
    return arr if arr.flags.aligned else arr.copy()


def parse_params(data: bytes | bytearray, path: str = "<bytes>") -> list[tuple[str, np.ndarray]]:
    """Parse the bytes of a ``.params`` file into ``(name, array)`` pairs in file order.

    Arrays are views into ``data`` (read-only for ``bytes``; copied only where misaligned).
    An unnamed list (K = 0) gets the names ``"0"``, ``"1"``, .... MXNet's "none" arrays come
    back as empty float32 arrays.
    """
    cur = _Cursor(data, path)
    header = cur.scalar("Q", "the list magic 0x112 (uint64)")
    if header != LIST_MAGIC:
        raise cur.fail(f"expected the list magic 0x112, found 0x{header:X}: not an MXNet .params file", 0)
    cur.take(8, "the reserved header word (uint64)")
    n = cur.scalar("Q", "the array count N (uint64)")
    if n * 4 > cur.remaining:  # every array record is at least its 4-byte magic
        raise cur.fail(f"array count {n} cannot fit in the {cur.remaining} bytes that remain", 16)
    arrays = [_read_array(cur, i) for i in range(n)]
    k_at = cur.pos
    k = cur.scalar("Q", "the name count K (uint64)")
    if k not in (0, n):
        raise cur.fail(f"expected 0 or {n} names (one per array), found {k}", k_at)
    names = []
    for i in range(k):
        length = cur.scalar("Q", f"length of name #{i} (uint64)")
        name_at = cur.pos
        raw = cur.take(length, f"name #{i}")
        try:
            names.append(str(raw, "utf-8"))
        except UnicodeDecodeError:
            raise cur.fail(f"name #{i} is not valid UTF-8", name_at) from None
    if cur.remaining:
        raise cur.fail(f"expected the end of the file, found {cur.remaining} more bytes")
    if not k:
        names = [str(i) for i in range(n)]
    return list(zip(names, arrays))


def strip_name(name: str) -> str:
    """Drop the symbolic-API ``arg:``/``aux:`` prefix from a parameter name."""
    return name[4:] if name.startswith(PREFIXES) else name


def read_params(path: str | os.PathLike, strip_prefix: bool = False) -> dict[str, np.ndarray]:
    """Read an MXNet ``.params`` file (legacy, V1, V2 or V3; dense arrays) into numpy arrays.

    Keys keep file order. With ``strip_prefix`` the ``arg:``/``aux:`` prefixes are removed.
    Raises :class:`WeightsError` on a missing, truncated, foreign or malformed file and on
    duplicate names.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = bytearray(size)  # writable, so the returned views are writable arrays
            got = fh.readinto(data)
    except OSError as exc:
        raise WeightsError(f"cannot read MXNet .params file {path}: {exc.strerror or exc}") from None
    if got != size:
        raise WeightsError(f"{path}: file changed while reading ({got} of {size} bytes read)")
    out: dict[str, np.ndarray] = {}
    for name, arr in parse_params(data, str(path)):
        key = strip_name(name) if strip_prefix else name
        if key in out:
            raise WeightsError(f"{path}: duplicate array name {key!r}"
                               + (f" (from {name!r} after stripping arg:/aux:)" if key != name else ""))
        out[key] = arr
    return out


def write_params(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], version: str = "v2") -> None:
    """Write ``arrays`` as an MXNet ``.params`` file in format ``legacy``, ``v1``, ``v2`` or ``v3``.

    The file is written atomically. 0-d arrays need ``v3``: the other formats read ndim 0 as
    "no array". Legacy files store dims as uint32.
    """
    if version not in VERSIONS:
        raise WeightsError(f"unknown .params version {version!r}: expected one of {VERSIONS}")
    chunks: list[bytes | memoryview] = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    for name, value in arrays.items():
        arr = np.asarray(value)
        flag = _FLAGS.get(arr.dtype.newbyteorder("<"))
        if flag is None:
            raise WeightsError(f"array {name!r}: dtype {arr.dtype} cannot be stored in a .params file "
                               f"(supported: {sorted(dt.name for dt in _DTYPES.values())})")
        if arr.ndim == 0 and version != "v3":
            raise WeightsError(f"array {name!r} is 0-d: only version 'v3' can store scalars "
                               f"(in {version} ndim 0 means 'no array')")
        if arr.ndim > MAX_NDIM:
            raise WeightsError(f"array {name!r} has {arr.ndim} dims, more than {MAX_NDIM}")
        if version == "legacy":
            if max(arr.shape, default=0) >= 2**32:
                raise WeightsError(f"array {name!r}: shape {arr.shape} does not fit legacy uint32 dims")
            head = struct.pack(f"<{arr.ndim + 1}I", arr.ndim, *arr.shape)
        elif version == "v1":
            head = struct.pack(f"<Ii{arr.ndim}q", V1_MAGIC, arr.ndim, *arr.shape)
        else:
            head = struct.pack(f"<Iii{arr.ndim}q", _VERSION_MAGIC[version], 0, arr.ndim, *arr.shape)
        data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        chunks += [head, struct.pack("<iii", 1, 0, flag), memoryview(data.reshape(-1).view(np.uint8))]
    chunks.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        if not isinstance(name, str):
            raise WeightsError(f"array names must be strings, got {name!r}")
        encoded = name.encode("utf-8")
        chunks += [struct.pack("<Q", len(encoded)), encoded]
    with atomic_write(path, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
