"""A GGUF file's metadata and tensor table, read without holding more than the values themselves.

`gguf.GGUFReader` turns every element of every metadata array into numpy views (a 49152-token vocabulary and
its merges: 159 MB of small objects for SmolLM2's 98 MB file, `benchmarks/scale.py parts`), and transformers
reads a GGUF config through it. `GGUFFile` parses the same header with `struct` into plain Python values (14
MB) and keeps where each tensor is: a tensor, or a range of its rows, is read from the file (and dequantized
by the caller) only when asked.

`lean_config_reader()` lets transformers' own GGUF config parsing (`load_gguf_checkpoint`, used by
`AutoConfig` and `AutoTokenizer` for the architectures its faster reader does not cover) read a `GGUFFile`
in place of a `gguf.GGUFReader`: the same fields, the same values, so the same config and tokenizer.
"""
from __future__ import annotations

import contextlib
import struct
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from synprune.errors import SynpruneError

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_PLAIN = {0: np.float32, 1: np.float16, 28: np.float64, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64}


class Field(NamedTuple):
    """One metadata entry in the shape transformers' GGUF parsing reads from `gguf.ReaderField`: `parts[i]` for
    `i` in `data` are its values (a string as its bytes, a number as a 1-tuple), `types` its GGUF value types
    ([type] or [ARRAY, element type])."""

    name: str
    parts: list
    data: list[int]
    types: list[int]


class Tensor(NamedTuple):
    """Where one tensor's bytes are: its GGUF name, ggml type, shape (torch order), absolute offset, size."""

    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int
    n_bytes: int


class GGUFFile:
    """The header of a GGUF file (module doc): `fields` (name -> Field) and `tensors` (list of Tensor), whose
    values `array` reads."""

    def __init__(self, path: str | Path):
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        self.path = str(path)
        self.blob = np.memmap(self.path, mode="r", dtype=np.uint8)
        blob = self.blob
        if bytes(blob[:4]) != b"GGUF":
            raise SynpruneError(f"{self.path} is not a GGUF file (it does not start with GGUF)")
        version, n_tensors, n_fields = struct.unpack_from("<IQQ", blob, 4)
        if version not in (2, 3):
            raise SynpruneError(f"{self.path} is GGUF version {version}; synprune reads versions 2 and 3")
        pos = 24
        self.fields: dict[str, Field] = {}
        for _ in range(n_fields):
            key, pos = self._string(pos)
            (kind,) = struct.unpack_from("<I", blob, pos)
            pos += 4
            if kind == _ARRAY:
                sub, count = struct.unpack_from("<IQ", blob, pos)
                pos += 12
                parts = []
                for _ in range(count):
                    value, pos = self._value(pos, sub)
                    parts.append(value)
                self.fields[key] = Field(key, parts, list(range(count)), [_ARRAY, sub])
            else:
                value, pos = self._value(pos, kind)
                self.fields[key] = Field(key, [value], [0], [kind])
        table = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            (n_dims,) = struct.unpack_from("<I", blob, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", blob, pos + 4)
            pos += 4 + 8 * n_dims
            kind, offset = struct.unpack_from("<IQ", blob, pos)
            pos += 12
            table.append((name, tuple(reversed(dims)), kind, offset))
        align = self.fields.get("general.alignment")
        align = int(align.parts[0][0]) if align is not None else 32
        start = (pos + align - 1) // align * align
        self.tensors: list[Tensor] = []
        for name, shape, kind, offset in table:
            qtype = GGMLQuantizationType(kind)
            block, size = GGML_QUANT_SIZES[qtype]
            n = int(np.prod(shape)) if shape else 1
            self.tensors.append(Tensor(name, qtype, shape, start + offset, n * size // block))
        del self.blob, blob  # the header's pages leave with the map; tensors are read by `array`

    def _string(self, pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self.blob, pos)
        return bytes(self.blob[pos + 8:pos + 8 + n]).decode("utf-8"), pos + 8 + n

    def _value(self, pos: int, kind: int) -> tuple[Any, int]:
        if kind == _STRING:
            (n,) = struct.unpack_from("<Q", self.blob, pos)
            return bytes(self.blob[pos + 8:pos + 8 + n]), pos + 8 + n
        fmt = _SCALAR.get(kind)
        if fmt is None:
            raise SynpruneError(f"{self.path} holds a metadata value of GGUF type {kind}, which synprune cannot read")
        return struct.unpack_from(fmt, self.blob, pos), pos + struct.calcsize(fmt)

    def value(self, key: str) -> Any:
        """A metadata value as Python (strings decoded, arrays as lists), or None."""
        f = self.fields.get(key)
        if f is None:
            return None
        values = [v.decode("utf-8") if isinstance(v, bytes) else v[0] for v in (f.parts[i] for i in f.data)]
        return values if f.types[0] == _ARRAY else values[0]

    def array(self, t: Tensor, rows: slice | None = None) -> np.ndarray:
        """Tensor `t`'s stored values, or the range `rows` (start:stop) of its first (torch) dimension only,
        read from the file into memory of their own (quantized blocks as uint8 rows of bytes, as
        `gguf.dequantize` reads them). Read, not mapped: pages of a mapped file count in the resident memory
        of the process for as long as the map lives."""
        from gguf import GGML_QUANT_SIZES

        dtype = _PLAIN.get(int(t.tensor_type))
        if dtype is None:  # blocks (and bfloat16): bytes, the last dimension in bytes
            block, size = GGML_QUANT_SIZES[t.tensor_type]
            shape = (*t.shape[:-1], t.shape[-1] // block * size)
            dtype = np.uint8
        else:
            shape = t.shape
        offset, count = t.offset, int(np.prod(shape)) if shape else 1
        if rows is not None:
            start, stop, step = rows.indices(shape[0])
            if step != 1:
                raise ValueError("GGUFFile.array reads a contiguous range of rows")
            per_row = count // shape[0] if shape[0] else 0
            offset += start * per_row * np.dtype(dtype).itemsize
            count = max(0, stop - start) * per_row
            shape = (max(0, stop - start), *shape[1:])
        return np.fromfile(self.path, dtype=dtype, count=count, offset=offset).reshape(shape)


@contextlib.contextmanager
def lean_config_reader() -> Iterator[None]:
    """Within this context, `gguf.GGUFReader(path)` (which transformers' GGUF config parsing calls) builds a
    `GGUFFile` instead (module doc)."""
    import gguf

    real = gguf.GGUFReader
    gguf.GGUFReader = lambda path, *args, **kwargs: GGUFFile(path)
    try:
        yield
    finally:
        gguf.GGUFReader = real


def gguf_config(path: str | Path, header: "GGUFFile | None" = None) -> Any:
    """transformers' config for a GGUF file, with what its GGUF reader leaves out filled in from the file.

    transformers (5.x) reads `attention.key_length` only for Gemma 2/3 and `rope.dimension_count` only for
    Llama, so a Qwen2/Qwen3 file whose head_dim is not hidden_size / heads (every head-pruned one, and Qwen3
    always) gets the wrong head_dim; and it leaves Gemma 2/3's query_pre_attn_scalar at the class default
    (256), where llama.cpp scales attention by 1/sqrt(key_length). This sets both from the file. Read with
    the lean header reader (`lean_config_reader`): the file's tensors are never loaded. `header`: the file's
    GGUFFile where the caller already has one.
    """
    from transformers import AutoConfig

    p = Path(path)
    with lean_config_reader():
        config = AutoConfig.from_pretrained(str(p.parent), gguf_file=p.name)
    header = header or GGUFFile(p)
    arch = header.value("general.architecture")
    key_length = header.value(f"{arch}.attention.key_length")
    if key_length is not None:
        config.head_dim = int(key_length)
        if arch in ("gemma2", "gemma3"):
            config.query_pre_attn_scalar = int(key_length)
    return config
