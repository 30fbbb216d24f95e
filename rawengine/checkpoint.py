"""Memory-mapped safetensors reading (single file or index-sharded) and shape checking.

We parse the safetensors header ourselves (8-byte length, JSON, raw data) and map the
file with numpy: no copy until a tensor is uploaded, and bfloat16 comes back as its
uint16 bit pattern (numpy has no bfloat16) for the backend to convert.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .errors import RawEngineError

_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def to_float32(a: np.ndarray, src_dtype: str) -> np.ndarray:
    """A stored tensor (BF16 as uint16 bits) -> float32; bfloat16 widening is exact."""
    if src_dtype == "BF16":
        return (np.asarray(a).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(a, np.float32)


class Checkpoint:
    """name -> (file, dtype, shape, byte range) over every shard of a model directory."""

    def __init__(self, path: str | Path):
        path = Path(path)
        index = path / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in path.glob("*.safetensors"))
        if not files:
            raise RawEngineError(f"{path} has no *.safetensors weights")
        self.entries: dict[str, tuple[Path, str, tuple, int, int]] = {}
        self._maps: dict[Path, np.memmap] = {}
        for name in files:
            self._read_header(path / name)

    def _read_header(self, file: Path) -> None:
        if not file.is_file():
            raise RawEngineError(f"missing weight shard {file}")
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise RawEngineError(f"{file} is not a safetensors file (truncated)")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                raise RawEngineError(f"{file} is not a safetensors file (bad header)")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RawEngineError(f"{file} is not a safetensors file (bad header)") from None
        size = file.stat().st_size
        for name, e in header.items():
            if name == "__metadata__":
                continue
            begin, end = e["data_offsets"]
            if e["dtype"] not in _NP_DTYPES:
                raise RawEngineError(f"{file}: tensor {name} has unsupported dtype {e['dtype']}")
            if 8 + n + end > size:
                raise RawEngineError(f"{file} is truncated (tensor {name} runs past the end)")
            self.entries[name] = (file, e["dtype"], tuple(e["shape"]), 8 + n + begin, 8 + n + end)

    def shapes(self) -> dict[str, tuple]:
        return {k: v[2] for k, v in self.entries.items()}

    def dtype(self, name: str) -> str:
        return self.entries[name][1]

    def get(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory-mapped array in its stored dtype (BF16 -> uint16 bits)."""
        file, dt, shape, begin, end = self.entries[name]
        mm = self._maps.get(file)
        if mm is None:
            mm = self._maps[file] = np.memmap(file, dtype=np.uint8, mode="r")
        return mm[begin:end].view(_NP_DTYPES[dt]).reshape(shape)


def check_shapes(ckpt: Checkpoint, expected: dict[str, tuple], optional: set[str] = frozenset(),
                 ignored_prefixes: tuple = ()) -> None:
    """Raise one error listing every missing, unexpected and mis-shaped tensor."""
    have = ckpt.shapes()
    missing = sorted(k for k in expected if k not in have and k not in optional)
    unexpected = sorted(k for k in have if k not in expected
                        and not any(k.startswith(p) or k.endswith(p) for p in ignored_prefixes))
    wrong = sorted(f"{k} {have[k]} (expected {expected[k]})"
                   for k in expected if k in have and tuple(have[k]) != tuple(expected[k]))
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)):
        if items:
            shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise RawEngineError("checkpoint does not match config.json: " + "; ".join(problems))
