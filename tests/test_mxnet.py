"""The numpy-only MXNet .params reader/writer: real files, round trips, malformed input."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plda.errors import WeightsError
from plda.weights.mxnet import VERSIONS, parse_params, read_params, write_params

V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
FLAG_DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8"}


def spec_parse(data: bytes) -> list[tuple[str, tuple[int, ...], np.ndarray]]:
    """A second, deliberately plain reading of the format (data/README.md), for cross-checks."""
    pos = 0

    def read(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    assert read("QQ") == (0x112, 0)
    (n,) = read("Q")
    arrays = []
    for _ in range(n):
        (magic,) = read("I")
        if magic in (V2, V3):
            assert read("i") == (0,)
        if magic in (V1, V2, V3):
            (ndim,) = read("i")
            shape = read(f"{ndim}q")
        else:
            shape = read(f"{magic}I")
        _dev_type, _dev_id, flag = read("iii")
        dtype = np.dtype(FLAG_DTYPES[flag])
        count = int(np.prod(shape)) if shape else 1
        arrays.append(np.frombuffer(data, dtype, count, pos).reshape(shape))
        pos += count * dtype.itemsize
    (k,) = read("Q")
    names = []
    for _ in range(k):
        (length,) = read("Q")
        names.append(data[pos : pos + length].decode())
        pos += length
    assert pos == len(data)
    return [(name, arr.shape, arr) for name, arr in zip(names, arrays)]


@pytest.fixture(scope="module")
def params_dir(shared_data: Path) -> Path:
    folder = shared_data / "mxnet-params"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


# ---- the real files ----------------------------------------------------------------------------

REAL_FILES = {
    # file: (first-array magic word, number of arrays)
    "mtcnn-det1-0001.params": (1, 13),  # legacy: the first word is ndim (a 1-d PReLU gamma)
    "gluon-net.params": (V2, 10),
    "gluon-mlp.params": (V3, 4),
    "mobilefacenet-model-0000.params": (V2, 284),
}


@pytest.mark.realdata
@pytest.mark.parametrize("fname", sorted(REAL_FILES))
def test_real_file_matches_independent_parse(params_dir, fname):
    raw = (params_dir / fname).read_bytes()
    magic, count = REAL_FILES[fname]
    assert struct.unpack_from("<I", raw, 24)[0] == magic
    expected = spec_parse(raw)
    got = read_params(params_dir / fname)
    assert len(got) == len(expected) == count
    assert list(got) == [name for name, _, _ in expected]
    for (name, shape, ref), (gname, arr) in zip(expected, got.items()):
        assert arr.shape == shape and arr.dtype == np.float32
        np.testing.assert_array_equal(arr, ref, err_msg=name)
        assert arr.flags.writeable


@pytest.mark.realdata
def test_real_file_names_and_counts(params_dir):
    mtcnn = read_params(params_dir / "mtcnn-det1-0001.params")
    assert all(k.startswith("arg:") for k in mtcnn)
    assert "arg:conv1_weight" in mtcnn and mtcnn["arg:conv1_weight"].shape == (10, 3, 3, 3)
    stripped = read_params(params_dir / "mtcnn-det1-0001.params", strip_prefix=True)
    assert list(stripped) == [k[4:] for k in mtcnn]

    net = read_params(params_dir / "gluon-net.params")
    assert list(net) == [f"{i}.{p}" for i in (0, 2, 5, 6, 7) for p in ("weight", "bias")]
    assert net["0.weight"].shape == (6, 1, 5, 5) and net["7.weight"].shape == (10, 84)

    mlp = read_params(params_dir / "gluon-mlp.params")
    assert {k: v.shape for k, v in mlp.items()} == {
        "hidden.weight": (256, 20), "hidden.bias": (256,),
        "output.weight": (10, 256), "output.bias": (10,)}

    mfn = read_params(params_dir / "mobilefacenet-model-0000.params")
    assert sum(a.size for a in mfn.values()) == 1_022_848
    assert all(k.startswith(("arg:", "aux:")) for k in mfn)
    aux = [k for k in mfn if k.startswith("aux:")]
    assert aux and all(k.endswith(("_moving_mean", "_moving_var")) for k in aux)
    assert len(read_params(params_dir / "mobilefacenet-model-0000.params", strip_prefix=True)) == 284


# ---- round trips -------------------------------------------------------------------------------

ALL_DTYPES = ["float32", "float64", "float16", "uint8", "int32", "int8", "int64",
              "bool", "int16", "uint16", "uint32", "uint64"]


def _sample(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dtype)


SHAPES = [(2, 3), (5,), (0,), (3, 0, 2), (1, 1, 1, 1, 7), (4, 1, 3, 3)]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_round_trip_every_version_and_dtype(tmp_path, version, dtype):
    arrays = {f"arg:a{i}": _sample(dtype, s, i) for i, s in enumerate(SHAPES)}
    if version == "v3":
        arrays["scalar"] = _sample(dtype, (), 99)
    path = tmp_path / "x.params"
    write_params(path, arrays, version=version)
    got = read_params(path)
    assert list(got) == list(arrays)
    for name, arr in arrays.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape
        np.testing.assert_array_equal(got[name], arr)
    if dtype in ("float32", "float64", "float16", "uint8", "int32", "int8", "int64"):
        spec = spec_parse(path.read_bytes())
        for (name, shape, ref), arr in zip(spec, arrays.values()):
            np.testing.assert_array_equal(ref, arr)


def test_write_layout_per_version(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    heads = {}
    for version in VERSIONS:
        write_params(tmp_path / f"{version}.params", {"w": arr}, version=version)
        heads[version] = (tmp_path / f"{version}.params").read_bytes()[24:52]
    assert struct.unpack_from("<3I", heads["legacy"]) == (2, 2, 3)
    assert struct.unpack_from("<Ii2q", heads["v1"]) == (V1, 2, 2, 3)
    assert struct.unpack_from("<Iii2q", heads["v2"]) == (V2, 0, 2, 2, 3)
    assert struct.unpack_from("<Iii2q", heads["v3"]) == (V3, 0, 2, 2, 3)


def test_big_endian_and_non_contiguous_input(tmp_path):
    base = np.arange(24, dtype=">f8").reshape(4, 6)
    arrays = {"be": base, "strided": np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2]}
    write_params(tmp_path / "x.params", arrays)
    got = read_params(tmp_path / "x.params")
    assert got["be"].dtype == np.float64
    np.testing.assert_array_equal(got["be"], base)
    np.testing.assert_array_equal(got["strided"], arrays["strided"])


@pytest.mark.parametrize("version", ["legacy", "v1", "v2"])
def test_scalar_needs_v3(tmp_path, version):
    with pytest.raises(WeightsError, match="0-d.*v3"):
        write_params(tmp_path / "x.params", {"s": np.float32(1.0)}, version=version)
    assert not (tmp_path / "x.params").exists()


def test_write_refuses_unknown_version_and_dtype(tmp_path):
    with pytest.raises(WeightsError, match="version"):
        write_params(tmp_path / "x.params", {"a": np.zeros(2)}, version="v4")
    with pytest.raises(WeightsError, match="complex128"):
        write_params(tmp_path / "x.params", {"a": np.zeros(2, np.complex128)})


def test_strip_prefix_and_duplicates(tmp_path):
    path = tmp_path / "x.params"
    write_params(path, {"arg:w": np.ones(2, np.float32), "aux:m": np.zeros(3, np.float32)})
    assert list(read_params(path, strip_prefix=True)) == ["w", "m"]
    write_params(path, {"arg:w": np.ones(2, np.float32), "aux:w": np.zeros(3, np.float32)})
    assert list(read_params(path)) == ["arg:w", "aux:w"]
    with pytest.raises(WeightsError, match="duplicate.*'w'"):
        read_params(path, strip_prefix=True)


# ---- hand-made records -------------------------------------------------------------------------

def _file(records: list[bytes], names: list[str] | None) -> bytearray:
    out = struct.pack("<QQQ", 0x112, 0, len(records)) + b"".join(records)
    names = [] if names is None else names
    out += struct.pack("<Q", len(names)) + b"".join(struct.pack("<Q", len(n)) + n.encode() for n in names)
    return bytearray(out)


def _v2(shape, flag=0, data=None, stype=0, magic=V2, dev_type=1) -> bytes:
    data = np.zeros(shape, FLAG_DTYPES.get(flag, "u1")).tobytes() if data is None else data
    return struct.pack(f"<Iii{len(shape)}qiii", magic, stype, len(shape), *shape, dev_type, 0, flag) + data


def test_unnamed_list_gets_index_names():
    got = parse_params(_file([_v2((2,)), _v2((1, 3))], None))
    assert [(n, a.shape) for n, a in got] == [("0", (2,)), ("1", (1, 3))]


def test_none_arrays():
    none_v2 = struct.pack("<Iii", V2, 0, 0)
    none_v3 = struct.pack("<Iii", V3, 0, -1)
    none_legacy = struct.pack("<I", 0)
    got = parse_params(_file([none_v2, none_v3, none_legacy, _v2((2,))], ["a", "b", "c", "d"]))
    assert [a.shape for _, a in got] == [(0,), (0,), (0,), (2,)]


@pytest.mark.parametrize("stype,kind", [(1, "row_sparse"), (2, "csr"), (7, "unknown storage type 7")])
def test_sparse_storage_is_refused(stype, kind):
    with pytest.raises(WeightsError, match=f"{kind}.*only dense") as err:
        parse_params(_file([_v2((2,), stype=stype)], ["s"]), "sparse.params")
    assert "sparse.params" in str(err.value) and "byte 28" in str(err.value)


def test_bad_dtype_device_trailing_and_names():
    with pytest.raises(WeightsError, match="dtype flag 12"):
        parse_params(_file([_v2((2,), flag=12, data=b"\0" * 4)], ["x"]))
    with pytest.raises(WeightsError, match="device type"):
        parse_params(_file([_v2((2,), dev_type=9)], ["x"]))
    with pytest.raises(WeightsError, match="1 more bytes"):
        parse_params(_file([_v2((2,))], ["x"]) + b"\0")
    with pytest.raises(WeightsError, match="expected 0 or 1 names"):
        parse_params(_file([_v2((2,))], ["x", "y"]))
    with pytest.raises(WeightsError, match="UTF-8"):
        data = _file([_v2((2,))], ["x"])
        data[-1] = 0xFF
        parse_params(data)
    with pytest.raises(WeightsError, match="bytes other than 0 and 1"):
        parse_params(_file([_v2((2,), flag=7, data=b"\x01\x07")], ["x"]))


def test_foreign_and_missing_files(tmp_path):
    png = tmp_path / "image.params"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(WeightsError, match=r"image\.params.*byte 0.*not an MXNet"):
        read_params(png)
    with pytest.raises(WeightsError, match="cannot read"):
        read_params(tmp_path / "absent.params")


# ---- malformed input: truncation, absurd headers, fuzzing -------------------------------------

@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("small")
    arrays = {"arg:w": np.arange(6, dtype=np.float16).reshape(2, 3), "aux:m": np.arange(3, dtype=np.int64),
              "e": np.zeros((0, 2), np.uint8)}
    out = {}
    for version in VERSIONS:
        write_params(folder / f"{version}.params", arrays, version=version)
        out[version] = (folder / f"{version}.params").read_bytes()
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_truncation_at_every_offset(small_files, version):
    data = small_files[version]
    assert len(parse_params(bytearray(data))) == 3
    for cut in range(len(data)):
        with pytest.raises(WeightsError, match="at byte"):
            parse_params(bytearray(data[:cut]), "cut.params")


def test_truncated_file_error_names_file_and_offset(tmp_path, small_files):
    path = tmp_path / "half.params"
    path.write_bytes(small_files["v2"][:60])
    with pytest.raises(WeightsError) as err:
        read_params(path)
    msg = str(err.value)
    # the record field that starts at byte 52 (ctx + dtype, 12 bytes) is cut after 8 bytes
    assert str(path) in msg and "at byte 52" in msg and "only 8 bytes remain" in msg


ABSURD = {
    "count": struct.pack("<QQQ", 0x112, 0, 2**60) + bytes(64),
    "count_max": struct.pack("<QQQ", 0x112, 0, 2**64 - 1) + bytes(64),
    "ndim": struct.pack("<QQQIii", 0x112, 0, 1, V2, 0, 1000) + bytes(64),
    "legacy_ndim": struct.pack("<QQQI", 0x112, 0, 1, 1000) + bytes(64),
    "dim": struct.pack("<QQQIiiqiii", 0x112, 0, 1, V2, 0, 1, 2**62, 1, 0, 0) + bytes(64),
    "dims_product": struct.pack("<QQQI4Iiii", 0x112, 0, 1, 4, *[2**32 - 1] * 4, 1, 0, 0) + bytes(64),
    "negative_dim": struct.pack("<QQQIi2qiii", 0x112, 0, 1, V1, 2, 4, -3, 1, 0, 0) + bytes(64),
    "name_length": _file([_v2((1,))], ["x"])[:-9] + struct.pack("<Q", 2**62) + b"x",
}


@pytest.mark.parametrize("case", sorted(ABSURD))
def test_absurd_header_raises_before_allocating(case):
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError, match="at byte"):
            parse_params(bytearray(ABSURD[case]), "absurd.params")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(blob):
    for data in (blob, struct.pack("<QQ", 0x112, 0) + blob):
        try:
            parse_params(bytearray(data))
        except WeightsError:
            pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(version=st.sampled_from(VERSIONS),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_mutated_valid_files(small_files, version, edits):
    data = bytearray(small_files[version])
    for pos, value in edits:
        data[pos % len(data)] = value
    try:
        for name, arr in parse_params(data):
            assert isinstance(name, str) and isinstance(arr, np.ndarray)
    except WeightsError:
        pass
