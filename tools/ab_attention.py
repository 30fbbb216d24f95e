"""A/B of decode-attention kernel configs on chosen cases, same process (GPU machine).

    PYTHONPATH=. python3 tools/ab_attention.py [--cases B:HQ:HKV:L,...] [--configs NAME=JSON;...]
                                               [--torch]

Every config runs the sync variant unless its JSON says "variant": "async"; keys other than
"variant" and "splits" go to decode_attention's config ({} = no config: the default rule). Timing, inputs and copy bandwidth as
tools/bench_attention.py (graph replays of back-to-back calls, median of 7). Prints us and
% of copy per case x config, and each config's geomean time ratio to the first config.
--torch adds torch SDPA flash (as in the grid) as the first column, timed before ours.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_attention import (Paged, calls_for, copy_bandwidth, kv_bytes, time_cupy,  # noqa: E402
                             torch_case)

CASES = "1:32:8:1024,1:32:8:16384,1:32:8:131072,8:32:8:16384,8:32:8:131072,32:32:8:16384"
CONFIGS = ('cc={"impl": "cuda_core"};mma={"impl": "mma"};mma_l2={"impl": "mma", "l2_256": 1}')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=CASES)
    ap.add_argument("--configs", default=CONFIGS)
    ap.add_argument("--out", default=None)
    ap.add_argument("--torch", action="store_true", help="also time torch SDPA flash")
    a = ap.parse_args()
    cases = [tuple(int(v) for v in c.split(":")) for c in a.cases.split(",")]
    configs = [(n, json.loads(j)) for n, j in (c.split("=", 1) for c in a.configs.split(";"))]
    bw = copy_bandwidth()
    print(f"copy {bw / 1e9:.0f} GB/s", flush=True)
    rows = []
    for b, hq, hkv, length in cases:
        nbytes = kv_bytes(b, hkv, length)
        row = {"case": f"B{b} {hq}/{hkv} L{length}"}
        if a.torch:  # before our cache is allocated: both fit at the grid's largest cells
            row["torch"] = torch_case(b, hq, hkv, length) or math.nan
            print(f"  {row['case']:18s} {'torch':12s} {row['torch']:9.1f} us", flush=True)
        p = Paged(b, hq, hkv, length)
        for name, cfg in configs:
            cfg = dict(cfg)
            variant = cfg.pop("variant", "sync")
            kw = {"num_splits": cfg.pop("splits")} if "splits" in cfg else {}
            us = time_cupy(p.fn(variant, config=cfg or None, **kw), calls_for(nbytes))
            row[name] = us
            print(f"  {row['case']:18s} {name:12s} {us:9.1f} us "
                  f"{100 * nbytes / us / 1e-6 / bw:6.1f}% copy", flush=True)
        p.free()
        rows.append(row)
    names = (["torch"] if a.torch else []) + [n for n, _ in configs]
    print("\n| case | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for r in rows:
        print(f"| {r['case']} | " + " | ".join(f"{r[n]:.1f}" for n in names) + " |")
    g = {n: math.exp(sum(math.log(r[n] / r[names[0]]) for r in rows) / len(rows)) for n in names}
    print("| time / first (geomean) | " + " | ".join(f"{g[n]:.3f}" for n in names) + " |")
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        Path(a.out, "ab_attention.json").write_text(json.dumps(dict(copy=bw, rows=rows), indent=1))


if __name__ == "__main__":
    main()
