"""`rawengine bench`: end-to-end speed on random weights of a real architecture (or a local
checkpoint): time to first token, steady decode tok/s, achieved GB/s against the copy
bandwidth measured in the same run, peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .errors import RawEngineError
from .presets import PRESETS, preset_config


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark decode speed (random-weight presets)")
    p.add_argument("preset", nargs="?", default="smollm2-135m",
                   help=f"one of {', '.join(PRESETS)}, or a local model directory")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batch", "-b", type=int, default=1)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto")
    p.add_argument("--no-graphs", action="store_true", help="eager decode (no CUDA graphs)")
    p.add_argument("--attention", choices=["sync", "async"], default=None,
                   help="GPU decode softmax variant (default sync)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.add_argument("--compare-torch", action="store_true",
                   help="also run HF transformers on the same architecture (needs torch)")


def cmd_bench(args) -> int:
    from .engine import Engine
    from .sampling import SamplingParams

    for name in ("prompt_len", "new_tokens", "batch"):
        if getattr(args, name) < 1:
            raise RawEngineError(f"--{name.replace('_', '-')} must be >= 1")
    if args.preset in PRESETS:
        src = preset_config(args.preset)
        # random weights: a long-context run may go past the model's trained length
        need = args.prompt_len + args.new_tokens + 1
        src.max_position_embeddings = max(src.max_position_embeddings, need)
    elif Path(args.preset).is_dir():
        src = Path(args.preset)
    else:
        raise RawEngineError(f"{args.preset!r} is neither a preset ({', '.join(PRESETS)}) "
                             "nor a model directory")
    log(f"building {args.preset} (batch {args.batch}, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens)")
    t0 = time.perf_counter()
    engine = Engine(src, device=args.device, dtype=None if args.dtype == "auto" else args.dtype,
                    max_model_len=args.prompt_len + args.new_tokens + 1,
                    max_num_seqs=args.batch, use_graphs=not args.no_graphs,
                    attention=getattr(args, "attention", None))
    log(f"ready in {time.perf_counter() - t0:.1f} s on {engine.backend.name}; warming up")
    rng = np.random.default_rng(0)
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)

    def run(new_tokens):
        prompts = [rng.integers(0, engine.cfg.vocab_size, args.prompt_len).tolist()
                   for _ in range(args.batch)]
        p = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        for _ in engine.generate(prompts, [p] * args.batch):
            pass
        return engine.stats

    run(min(8, args.new_tokens))  # compiles kernels, captures graphs
    log("measuring")
    st = run(params.max_tokens)
    res = results(engine, args, st)
    if args.compare_torch:
        res["torch"] = compare_torch(args)
    print_results(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def results(engine, args, st) -> dict:
    steps = st.decode_steps
    per_seq = steps / st.decode_s if st.decode_s > 0 else 0.0
    mean_ctx = args.prompt_len + steps / 2
    step_bytes = engine.weight_bytes() + args.batch * engine.kv_bytes_per_step(int(mean_ctx))
    b = engine.backend
    copy_bw = b.copy_bandwidth() if hasattr(b, "copy_bandwidth") else None
    gbps = step_bytes * per_seq / 1e9
    return dict(preset=args.preset, backend=b.name, dtype=str(np.dtype(b.dtype).name)
                if b.name == "numpy" else getattr(b, "dtype_name", "?"),
                device=b.device_name() if hasattr(b, "device_name") else "cpu",
                batch=args.batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                graphs=engine.graphs is not None, ttft_ms=st.prefill_s * 1e3,
                prefill_tok_s=st.prompt_tokens / st.prefill_s if st.prefill_s else 0.0,
                decode_tok_s_per_seq=per_seq, decode_tok_s_total=per_seq * args.batch,
                gb_per_s=gbps, copy_gb_per_s=copy_bw,
                pct_of_copy=100 * gbps / copy_bw if copy_bw else None,
                roofline_tok_s=copy_bw * 1e9 / step_bytes if copy_bw else None,
                peak_gpu_gib=b.peak_memory() / 2**30 if hasattr(b, "peak_memory") else None)


def print_results(r: dict) -> None:
    rows = [("time to first token", f"{r['ttft_ms']:.1f} ms"),
            ("prefill", f"{r['prefill_tok_s']:.0f} tok/s"),
            ("decode per sequence", f"{r['decode_tok_s_per_seq']:.1f} tok/s"),
            ("decode total", f"{r['decode_tok_s_total']:.1f} tok/s"),
            ("achieved bandwidth", f"{r['gb_per_s']:.0f} GB/s")]
    if r["copy_gb_per_s"]:
        rows += [("copy bandwidth (measured)", f"{r['copy_gb_per_s']:.0f} GB/s"),
                 ("% of copy bandwidth", f"{r['pct_of_copy']:.1f} %"),
                 ("roofline", f"{r['roofline_tok_s']:.0f} tok/s per sequence")]
    if r["peak_gpu_gib"] is not None:
        rows.append(("peak GPU memory", f"{r['peak_gpu_gib']:.2f} GiB"))
    for k, v in (r.get("torch") or {}).items():
        if k == "compile_s":
            rows.append(("torch compile + first run", f"{v:.0f} s"))
        else:
            rows.append((f"torch {k}", f"{v:.1f} tok/s  (ours {r['decode_tok_s_per_seq'] / v:.2f}x)"))
    print(f"{r['preset']} on {r['device']} ({r['backend']}, {r['dtype']}, batch {r['batch']}, "
          f"graphs {'on' if r['graphs'] else 'off'})")
    for k, v in rows:
        print(f"  {k:<28} {v}")


def compare_torch(args) -> dict:
    """Runs tools/compare_torch.py in a subprocess so rawengine itself never imports torch."""
    script = Path(__file__).resolve().parent.parent / "tools" / "compare_torch.py"
    if not script.is_file():
        raise RawEngineError("--compare-torch needs a source checkout (tools/compare_torch.py)")
    log("running HF transformers for comparison (this takes a while)")
    cmd = [sys.executable, str(script), args.preset, "--batch", str(args.batch),
           "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RawEngineError("torch comparison failed: " + (out.stderr.strip().splitlines() or
                                                           ["unknown error"])[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)
