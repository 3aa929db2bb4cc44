"""A small, independent GGUF v2/v3 reader (numpy + standard library only).

This is deliberately written from the GGUF specification, not from the C++ code in
engine/, so that tests comparing the two catch mistakes made in either.

File layout (all little-endian):
    u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv  x (string key, u32 value_type, value)
    n_tensors x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset)
    padding up to `general.alignment` (default 32)
    tensor data; each tensor's `offset` is relative to the start of this section.

GGUF v1 used u32 for counts and string lengths; it is rejected here (no model we use
is v1, and the C++ loader does not accept it either).

Tensor data is exposed as a numpy memmap of raw bytes so that opening a model of a few
hundred MB costs nothing until a tensor is actually dequantized (see dequant.py).
"""

import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32

# GGUF metadata value types.
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32 = 0, 1, 2, 3, 4, 5
T_FLOAT32, T_BOOL, T_STRING, T_ARRAY = 6, 7, 8, 9
T_UINT64, T_INT64, T_FLOAT64 = 10, 11, 12

# Fixed-size scalar value types -> struct format.
_SCALAR_FMT = {
    T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h",
    T_UINT32: "<I", T_INT32: "<i", T_FLOAT32: "<f", T_BOOL: "<?",
    T_UINT64: "<Q", T_INT64: "<q", T_FLOAT64: "<d",
}
# Same types as numpy dtypes, used to read large scalar arrays in one go
# (token scores / token types arrays have tens of thousands of entries).
_SCALAR_NP = {
    T_UINT8: np.uint8, T_INT8: np.int8, T_UINT16: "<u2", T_INT16: "<i2",
    T_UINT32: "<u4", T_INT32: "<i4", T_FLOAT32: "<f4", T_BOOL: np.bool_,
    T_UINT64: "<u8", T_INT64: "<i8", T_FLOAT64: "<f8",
}

# ggml tensor types we know the block geometry of: type -> (name, block_elems, block_bytes).
# Only the ones listed in dequant.py can be dequantized, but knowing the sizes of the
# others lets us still parse (and size-check) files that contain them.
GGML_TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    30: ("BF16", 1, 2),
}
GGML_TYPE_BY_NAME = {v[0]: k for k, v in GGML_TYPES.items()}


class GGUFError(ValueError):
    pass


@dataclass
class TensorInfo:
    name: str
    dims: Tuple[int, ...]   # ggml order: dims[0] is the contiguous (fastest) axis
    ggml_type: int
    offset: int             # relative to the data section
    data: np.ndarray = field(repr=False, default=None)  # raw bytes (uint8 memmap slice)

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type][0]

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def np_shape(self) -> Tuple[int, ...]:
        # numpy is row-major, so ggml's fastest axis comes last: {in, out} -> (out, in).
        return tuple(reversed(self.dims))

    @property
    def n_bytes(self) -> int:
        _, blk, size = GGML_TYPES[self.ggml_type]
        return self.n_elements // blk * size


class _Reader:
    """Cursor over a bytes-like buffer with bounds checks (a truncated file must fail
    with a clear error, not an IndexError deep inside struct)."""

    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFError(f"truncated file: need {n} bytes at offset {self.pos}, "
                            f"file has {len(self.buf)}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, vtype: int):
        fmt = _SCALAR_FMT[vtype]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def u32(self) -> int:
        return self.scalar(T_UINT32)

    def u64(self) -> int:
        return self.scalar(T_UINT64)

    def string(self) -> str:
        n = self.u64()
        return bytes(self.take(n)).decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALAR_FMT:
            return self.scalar(vtype)
        if vtype == T_STRING:
            return self.string()
        if vtype == T_ARRAY:
            elem_type = self.u32()
            n = self.u64()
            if elem_type in _SCALAR_NP:
                # Fast path: one frombuffer for the whole array. Returned as a plain
                # list so metadata compares equal to Python literals in tests.
                dt = np.dtype(_SCALAR_NP[elem_type])
                raw = self.take(n * dt.itemsize)
                return np.frombuffer(raw, dtype=dt).tolist()
            # Strings and nested arrays have variable size: element by element.
            return [self.value(elem_type) for _ in range(n)]
        raise GGUFError(f"unknown metadata value type {vtype} at offset {self.pos}")


class GGUFFile:
    """Parsed GGUF file.

    Attributes:
        version:      2 or 3
        metadata:     dict key -> Python value (arrays are lists, possibly nested)
        metadata_types: dict key -> GGUF value type of the top-level value
        tensors:      dict name -> TensorInfo (in file order; dicts keep insertion order)
        alignment:    data alignment in bytes
        data_offset:  absolute file offset of the tensor data section
    """

    def __init__(self, path: str):
        self.path = path
        # mode "r": read-only memmap; nothing is copied until a tensor is used.
        self._mm = np.memmap(path, dtype=np.uint8, mode="r")
        r = _Reader(memoryview(self._mm))

        if bytes(r.take(4)) != GGUF_MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (bad magic)")
        self.version = r.u32()
        if self.version not in (2, 3):
            raise GGUFError(f"{path}: unsupported GGUF version {self.version}")
        n_tensors = r.u64()
        n_kv = r.u64()

        self.metadata: Dict[str, Any] = {}
        self.metadata_types: Dict[str, int] = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = r.u32()
            if key in self.metadata:
                raise GGUFError(f"{path}: duplicate metadata key {key!r}")
            self.metadata[key] = r.value(vtype)
            self.metadata_types[key] = vtype

        self.alignment = int(self.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
        if self.alignment <= 0 or self.alignment & (self.alignment - 1):
            raise GGUFError(f"{path}: alignment {self.alignment} is not a power of two")

        infos: List[TensorInfo] = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.u32()
            if n_dims > 4:
                raise GGUFError(f"{path}: tensor {name!r} has {n_dims} dims (max 4)")
            dims = tuple(r.u64() for _ in range(n_dims))
            ggml_type = r.u32()
            offset = r.u64()
            if ggml_type not in GGML_TYPES:
                raise GGUFError(f"{path}: tensor {name!r} has unknown ggml type {ggml_type}")
            info = TensorInfo(name, dims, ggml_type, offset)
            if dims and dims[0] % GGML_TYPES[ggml_type][1]:
                raise GGUFError(f"{path}: tensor {name!r} row of {dims[0]} elements is not "
                                f"a multiple of the {info.type_name} block size")
            infos.append(info)

        # The data section starts at the next multiple of the alignment after the header.
        self.data_offset = (r.pos + self.alignment - 1) // self.alignment * self.alignment

        self.tensors: Dict[str, TensorInfo] = {}
        for info in infos:
            if info.name in self.tensors:
                raise GGUFError(f"{path}: duplicate tensor name {info.name!r}")
            if info.offset % self.alignment:
                raise GGUFError(f"{path}: tensor {info.name!r} offset {info.offset} "
                                f"is not aligned to {self.alignment}")
            start = self.data_offset + info.offset
            end = start + info.n_bytes
            if end > len(self._mm):
                raise GGUFError(f"{path}: tensor {info.name!r} data [{start}, {end}) "
                                f"runs past end of file ({len(self._mm)} bytes)")
            info.data = self._mm[start:end]
            self.tensors[info.name] = info

    # Convenience accessors -------------------------------------------------------

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def __contains__(self, tensor_name: str) -> bool:
        return tensor_name in self.tensors

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor named {name!r}") from None


def load(path: str) -> GGUFFile:
    return GGUFFile(path)


# --- writer (tests only) ---------------------------------------------------------------
# A minimal writer so tests can build synthetic files (e.g. a qwen2 model, quantized
# tensors, every metadata type). Kept next to the reader so the two stay in sync.

def _pack_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _pack_value(vtype: int, value, elem_type: int = None) -> bytes:
    if vtype in _SCALAR_FMT:
        return struct.pack(_SCALAR_FMT[vtype], value)
    if vtype == T_STRING:
        return _pack_string(value)
    if vtype == T_ARRAY:
        # value: (elem_type, list) where nested arrays are again (elem_type, list)
        et, items = value
        out = struct.pack("<IQ", et, len(items))
        for it in items:
            out += _pack_value(et, it)
        return out
    raise GGUFError(f"cannot pack value type {vtype}")


def write(path: str, metadata: List[Tuple[str, int, Any]],
          tensors: List[Tuple[str, Tuple[int, ...], int, bytes]],
          version: int = 3, alignment: int = GGUF_DEFAULT_ALIGNMENT) -> None:
    """Write a GGUF file.

    metadata: list of (key, value_type, value); an array value is (elem_type, items),
              nested arrays likewise. If alignment != 32, add general.alignment yourself.
    tensors:  list of (name, ggml dims, ggml_type, raw bytes).
    """
    header = GGUF_MAGIC + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, vtype, value in metadata:
        header += _pack_string(key) + struct.pack("<I", vtype) + _pack_value(vtype, value)
    offset = 0
    offsets = []
    for name, dims, gtype, raw in tensors:
        offsets.append(offset)
        offset += len(raw)
        offset = (offset + alignment - 1) // alignment * alignment
    for (name, dims, gtype, raw), off in zip(tensors, offsets):
        header += _pack_string(name) + struct.pack("<I", len(dims))
        header += struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", gtype, off)
    pad = (-len(header)) % alignment
    with open(path, "wb") as f:
        f.write(header + b"\0" * pad)
        pos = 0
        for (name, dims, gtype, raw), off in zip(tensors, offsets):
            f.write(b"\0" * (off - pos))
            f.write(raw)
            pos = off + len(raw)
