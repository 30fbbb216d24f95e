"""Write a random-weight HF checkpoint of a preset's architecture (fp16 safetensors), e.g. to
time `rawengine generate` start-up where the real weights cannot travel.

    python tools/random_checkpoint.py smollm2-135m /tmp/smol [--tokenizer-from DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja")


def main() -> None:
    from safetensors.numpy import save_file

    from rawengine.models.llama import hf_shapes
    from rawengine.presets import PRESETS, preset_config

    ap = argparse.ArgumentParser()
    ap.add_argument("preset", choices=list(PRESETS))
    ap.add_argument("out")
    ap.add_argument("--tokenizer-from", default=None)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(PRESETS[a.preset], indent=2))
    rng = np.random.default_rng(0)
    tensors = {}
    for name, shape in hf_shapes(preset_config(a.preset)).items():
        std = 1.0 if "embed" in name else shape[-1] ** -0.5
        w = rng.standard_normal(shape, np.float32) * std
        tensors[name] = (w + 1.0 if len(shape) == 1 else w).astype(np.float16)
    save_file(tensors, str(out / "model.safetensors"))
    if a.tokenizer_from:
        for f in TOKENIZER_FILES:
            if (Path(a.tokenizer_from) / f).is_file():
                shutil.copy(Path(a.tokenizer_from) / f, out / f)


if __name__ == "__main__":
    main()
