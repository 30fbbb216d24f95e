"""Wider GEMV sweep at small M than `rawengine tune` runs (GPU machine).

    PYTHONPATH=. python tools/sweep_gemv.py [--m 1] [--write DIR]

For each Llama-2-7B / Llama-3-8B decode shape: every (rows, warps, unroll, split, stages) in a
grid (stages: the cp.async weight ring of gemv.cu, --stages; 0 = loads into registers),
timed like the tuner (CUDA-graph replays, weights rotated past L2, programmatic launch on), next
to the shipped table's choice. --write DIR: a copy of the shipped table whose M <= m entry of
each shape becomes the sweep's winner where it beats the table by > 2%, written to
DIR/tuning/<gpu>.json (RAWENGINE_CACHE=DIR makes the engine use it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = [(4096, 4096), (6144, 4096), (12288, 4096), (28672, 4096), (22016, 4096),
          (4096, 14336), (4096, 11008), (32000, 4096)]


def main() -> None:
    from rawengine import tune
    from rawengine.backends.cuda import gemm

    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--write", default=None)
    ap.add_argument("--all", action="store_true", help="every shape of the shipped table whose "
                    "weights are >= 8 MB (default: the Llama-2-7B / Llama-3-8B ones)")
    ap.add_argument("--stages", default="0", help="comma-separated ring depths (0: registers)")
    a = ap.parse_args()
    grid = [dict(rows=r, warps=w, unroll=u, split=s, stages=st)
            for st in (int(v) for v in a.stages.split(","))
            for r, w, u, s in itertools.product((1, 2, 4), (4, 8, 16), (2, 4, 8), (1, 0))
            if r * u <= 16 and (st == 0 or (s == 1 and st * r * u * w <= 256))]
    gpu = gemm.gpu_name()
    shipped = json.loads((gemm._TUNING_DIR / tune.table_filename(gpu)).read_text())
    shapes = SHAPES
    if a.all:
        shapes = [tuple(int(v) for v in k.split("x")) for k in shipped["shapes"]]
        shapes = [(n, k) for n, k in shapes if n * k * 2 >= 8 << 20]
    winners = {}
    print("| shape | table params | table us | best params | best us | gain | best stages=0 us |")
    print("|---|---|---|---|---|---|---|")
    for N, K in shapes:
        p = tune.Problem(a.m, N, K)
        impl, params = gemm.choose(a.m, N, K, capturing=True)
        t_table = tune.time_impl(p, impl, params)
        best = (t_table, params)
        best_reg = float("inf")
        for c in grid:
            try:
                t = tune.time_impl(p, "gemv", c)
            except Exception as e:  # noqa: BLE001 - a config the launcher rejects
                print(f"  skip {c}: {e}", file=sys.stderr)
                continue
            if t < best[0]:
                best = (t, c)
            if not c["stages"]:
                best_reg = min(best_reg, t)
        gain = t_table / best[0]
        print(f"| {N}x{K} | {impl} {params} | {t_table:.1f} | {best[1]} | {best[0]:.1f} | "
              f"{gain:.3f} | {best_reg:.1f} |", flush=True)
        if gain > 1.02:
            winners[f"{N}x{K}"] = best[1]
        del p
    if a.write:
        for key, params in winners.items():
            rules = shipped["shapes"][key]
            first = rules[0]
            if first["m_max"] == a.m:
                rules[0] = {"impl": "gemv", "m_max": a.m, "params": params}
            else:
                rules.insert(0, {"impl": "gemv", "m_max": a.m, "params": params})
        out = Path(a.write) / "tuning"
        out.mkdir(parents=True, exist_ok=True)
        (out / tune.table_filename(gpu)).write_text(json.dumps(shipped, indent=1))
        print(f"wrote {out / tune.table_filename(gpu)} ({len(winners)} shapes changed)")


if __name__ == "__main__":
    main()
