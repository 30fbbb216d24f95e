"""The end-to-end grid for BENCHMARKS.md (GPU machine): `rawengine bench` over presets,
batch sizes and prompt lengths, in one process; JSON lines + a markdown table.

    PYTHONPATH=. python tools/bench_e2e.py --out $OUT [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FULL = [(p, b, n) for p in ("smollm2-135m", "llama-3.2-1b", "llama-2-7b", "llama-3-8b",
                            "qwen2.5-7b") for b in (1, 8, 32) for n in (128, 2048)]
QUICK = [("smollm2-135m", 1, 128), ("llama-3-8b", 1, 128), ("llama-2-7b", 1, 128),
         ("llama-3-8b", 32, 2048)]


def one(preset: str, batch: int, prompt: int, new: int, graphs: bool = True) -> dict:
    import cupy as cp

    from rawengine.bench import cmd_bench

    args = argparse.Namespace(preset=preset, prompt_len=prompt, new_tokens=new, batch=batch,
                              device="cuda", dtype="float16", no_graphs=not graphs, json=None,
                              compare_torch=False)
    out = Path("/tmp/bench_one.json")
    args.json = str(out)
    cmd_bench(args)
    gc.collect()
    cp.get_default_memory_pool().free_all_blocks()
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--extra", default="", help="extra runs: preset:batch:prompt,...")
    a = ap.parse_args()
    grid = QUICK if a.quick else FULL
    grid += [tuple(int(v) if i else v for i, v in enumerate(x.split(":")))
             for x in a.extra.split(",") if x]
    rows = []
    with open(Path(a.out) / "bench_e2e.jsonl", "w") as f:
        for preset, batch, prompt in grid:
            try:
                r = one(preset, batch, prompt, a.new_tokens)
            except Exception as e:  # keep the grid going; report the failure
                r = dict(preset=preset, batch=batch, prompt_len=prompt, error=str(e)[:200])
            f.write(json.dumps(r) + "\n")
            f.flush()
            rows.append(r)
    print("\n| preset | batch | prompt | TTFT ms | prefill tok/s | decode tok/s/seq | total tok/s"
          " | GB/s | % copy | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['preset']} | {r['batch']} | {r['prompt_len']} | error: {r['error']} |")
            continue
        print(f"| {r['preset']} | {r['batch']} | {r['prompt_len']} | {r['ttft_ms']:.1f} | "
              f"{r['prefill_tok_s']:.0f} | {r['decode_tok_s_per_seq']:.1f} | "
              f"{r['decode_tok_s_total']:.0f} | {r['gb_per_s']:.0f} | {r['pct_of_copy']:.1f} | "
              f"{r['peak_gpu_gib']:.1f} |")


if __name__ == "__main__":
    main()
