""".safetensors read and written one tensor at a time, so a 7 GB model never has a second copy in memory.

Why not the library: `safetensors.torch.load_file` / `safe_open` memory-map the file, and every page read through the
map counts in the process's resident memory until the map is closed (a whole-model load shows ~2× the model);
`save_file` first turns every tensor into a `bytes` copy. Here reads go through plain `readinto` into the tensor's
own storage (file pages stay in the kernel's cache, not in this process) and writes stream each tensor's bytes.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}} padded with spaces to a multiple of 8,
then the tensors' bytes, little-endian, offsets relative to the end of the header."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from tunelab import atomic
from tunelab.errors import fail

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # the library's own limit: a larger length field means a corrupt file
CAST_CHUNK_BYTES = 16 * 2**20


class SafetensorsReader:
    """The tensors of one file, read on demand (`read(key)`); use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = open(self.path, "rb")
        try:
            (length,) = struct.unpack("<Q", self.file.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"header length {length}")
            header = json.loads(self.file.read(length))
            self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
            self.entries: dict[str, dict] = header
            end = max((int(e["data_offsets"][1]) for e in self.entries.values()), default=0)
        except (struct.error, ValueError, KeyError, TypeError, IndexError) as e:
            self.file.close()
            raise fail(self.path, f"not a valid .safetensors file (truncated or corrupt: {e})") from None
        self.data_start = 8 + length
        self.scratch: torch.Tensor | None = None
        size = os.fstat(self.file.fileno()).st_size
        if self.data_start + end > size:  # checked before any tensor is read, as the library does
            self.file.close()
            raise fail(self.path, f"not a valid .safetensors file (truncated: the header needs "
                                  f"{self.data_start + end} bytes, the file has {size})")

    def keys(self) -> list[str]:
        """Keys in file order: reading them in this order reads the file front to back."""
        return sorted(self.entries, key=lambda k: self.entries[k]["data_offsets"][0])

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        name = self.entries[key]["dtype"]
        if name not in DTYPES:
            raise fail(self.path, f"{key}: unsupported dtype {name}")
        return DTYPES[name]

    def nbytes(self, key: str) -> int:
        begin, end = self.entries[key]["data_offsets"]
        return end - begin

    def read(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor `key`, floats cast to `dtype` when given. A cast goes through a small reused buffer, chunk by
        chunk, straight into the result: a whole-tensor buffer per tensor, freed right after its cast, leaves holes
        the allocator cannot always reuse (+20 % RSS on a full-size fp16 → bf16 load)."""
        stored = self.dtype(key)
        begin, end = self.entries[key]["data_offsets"]
        self.file.seek(self.data_start + begin)
        if dtype is None or dtype == stored or not stored.is_floating_point:
            out = torch.empty(end - begin, dtype=torch.uint8)
            self._read_into(key, out)
            return out.view(stored).reshape(self.shape(key))
        out = torch.empty(self.shape(key), dtype=dtype)
        flat, step = out.view(-1), CAST_CHUNK_BYTES // stored.itemsize
        if self.scratch is None:
            self.scratch = torch.empty(CAST_CHUNK_BYTES, dtype=torch.uint8)
        for i in range(0, flat.numel(), step):
            n = min(step, flat.numel() - i)
            chunk = self.scratch[: n * stored.itemsize]
            self._read_into(key, chunk)
            flat[i: i + n].copy_(chunk.view(stored))
        return out

    def _read_into(self, key: str, buffer: torch.Tensor) -> None:
        if buffer.numel() and self.file.readinto(memoryview(buffer.numpy())) != buffer.numel():
            raise fail(self.path, f"{key}: file ends inside the tensor (truncated)")

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_safetensors(target: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                      dtype: torch.dtype | None = None,
                      chunks: Callable[[str, torch.Tensor], Iterable[memoryview]] | None = None) -> None:
    """Write `tensors` (floats cast to `dtype` one at a time when given) atomically: header first, then each
    tensor's bytes; memory use beyond the tensors themselves is one tensor. `chunks(key, tensor)`, when given,
    yields a tensor's bytes instead (`models.stream_save`: meta tensors whose values come from a file)."""
    def stored_dtype(t: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and t.is_floating_point() else t.dtype

    encoded = encode_header({k: (stored_dtype(t), tuple(t.shape)) for k, t in tensors.items()}, metadata)
    with atomic.atomic_path(target) as tmp, open(tmp, "wb") as f:
        f.write(encoded)
        for key, tensor in tensors.items():
            for chunk in chunks(key, tensor) if chunks is not None else tensor_bytes([tensor], dtype):
                f.write(chunk)


def encode_header(layout: dict[str, tuple[torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None) -> bytes:
    """Length field + JSON header of a file holding tensors of these (dtype, shape), stored in this order."""
    header: dict[str, dict] = {}
    offset = 0
    for key, (dtype, shape) in layout.items():
        size = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded


def tensor_bytes(tensors: Iterable[torch.Tensor], dtype: torch.dtype | None) -> Iterator[memoryview]:
    for tensor in tensors:
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        yield memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def drop_from_page_cache(path: str | Path) -> None:
    """Tell the kernel the file's cached pages will not be needed again (a 7 GB read need not push the rest of the
    machine's working set out of memory)."""
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
