#!/usr/bin/env python3
"""Convert a llama-architecture GGUF file into a Hugging Face-layout model directory.

    python tools/convert_gguf.py GGUF_PATH OUT_DIR [--dtype float16|float32] [--force]

Writes config.json, generation_config.json, tokenizer.json, tokenizer_config.json,
special_tokens_map.json and model.safetensors. Needs the `gguf` package (pip install gguf).
The implementation lives in rawengine.gguf_convert; from python: ``convert(gguf_path, out_dir,
progress=callable|None)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from rawengine.gguf_convert import convert, iter_summary
except ImportError:  # run from a checkout without rawengine installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from rawengine.gguf_convert import convert, iter_summary
from rawengine.errors import RawEngineError

__all__ = ["convert", "main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Convert a llama GGUF file to a HF-layout directory.")
    ap.add_argument("gguf_path", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default="float16",
        help="storage type of the dequantized weights (float16; float32 keeps them exactly)",
    )
    ap.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    args = ap.parse_args(argv)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        out = convert(
            args.gguf_path, args.out_dir, progress=progress, dtype=args.dtype, overwrite=args.force
        )
    except RawEngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    for line in iter_summary(out):
        progress(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
