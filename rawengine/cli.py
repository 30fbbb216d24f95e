"""`rawengine generate | download | bench | tune`. Errors print one line and exit non-zero
(set RAWENGINE_DEBUG=1 for the traceback)."""

from __future__ import annotations

import argparse
import os
import resource
import sys

from .errors import RawEngineError
from .hub import DEFAULT_MODEL


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None,
                   help=f"local path or hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="context length to reserve KV cache for (default: min(model, 8192))")
    p.add_argument("--attention", choices=["sync", "async"], default=None,
                   help="GPU decode softmax: split-KV with running max (sync, default) or "
                        "unified max (async, FlashDecoding++)")


def generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt (streams to stdout)")
    p.add_argument("prompt_arg", nargs="?", metavar="PROMPT", help="the prompt ('-' reads stdin)")
    p.add_argument("--prompt", "-p", default=None, help="the prompt ('-' reads stdin)")
    p.add_argument("--system", default=None, help="system message (chat models)")
    p.add_argument("--max-tokens", "-n", type=int, default=256)
    p.add_argument("--temperature", "--temp", type=float, default=None,
                   help="0 = greedy (default: the model's generation_config, else greedy)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--no-chat-template", action="store_true",
                   help="send the prompt as raw text even if the model has a chat template")
    p.add_argument("--quiet", "-q", action="store_true", help="no stats line on stderr")
    add_model_args(p)


def read_prompt(args) -> str:
    if args.prompt is not None and args.prompt_arg is not None:
        raise RawEngineError("give the prompt either as an argument or with --prompt, not both")
    prompt = args.prompt if args.prompt is not None else args.prompt_arg
    if prompt is None:
        raise RawEngineError("no prompt: pass it as an argument, with --prompt, or '-' for stdin")
    if prompt == "-":
        prompt = sys.stdin.read()
    return prompt


def cmd_generate(args) -> int:
    from .api import LLM

    prompt = read_prompt(args)
    llm = LLM(args.model, device=args.device, dtype=None if args.dtype == "auto" else args.dtype,
              max_model_len=args.max_model_len, max_num_seqs=1, attention=args.attention)
    params = llm.default_params(max_tokens=args.max_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                                repetition_penalty=args.repetition_penalty, seed=args.seed,
                                stop=args.stop, ignore_eos=args.ignore_eos or None)
    for piece in llm.stream(prompt, params, chat=not args.no_chat_template, system=args.system):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if not args.quiet:
        print(stats_line(llm), file=sys.stderr)
    return 0


def stats_line(llm) -> str:
    st, e = llm.engine.stats, llm.engine
    decoded = max(st.generated_tokens - 1, 0)  # the first token comes from prefill
    parts = [f"prompt {st.prompt_tokens} tok, prefill {rate(st.prompt_tokens, st.prefill_s)} tok/s",
             f"generated {st.generated_tokens} tok, decode {rate(decoded, st.decode_s)} tok/s"]
    if decoded and st.decode_s > 0 and hasattr(e.backend, "peak_memory"):
        step_bytes = e.weight_bytes() + e.kv_bytes_per_step(st.prompt_tokens + decoded // 2)
        parts.append(f"{step_bytes * decoded / st.decode_s / 1e9:.0f} GB/s")
        parts.append(f"peak GPU {e.backend.peak_memory() / 2**30:.2f} GiB")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    parts.append(f"peak RSS {rss:.2f} GiB, {e.backend.name}")
    return "[" + " | ".join(parts) + "]"


def rate(n: int, s: float) -> str:
    return f"{n / s:.1f}" if s > 0 and n else "-"


def cmd_download(args) -> int:
    from .hub import resolve_model

    print(resolve_model(args.model))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rawengine", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    generate_parser(sub)
    d = sub.add_parser("download", help="fetch a model into weights/ (or resolve a local one)")
    d.add_argument("model", nargs="?", default=None)
    from .bench import add_bench_parser
    add_bench_parser(sub)
    sub.add_parser("tune", help="profile GEMM implementations and write a dispatch table",
                   add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tune"]:
        return run_guarded(lambda: tune(argv[1:]))
    args = parser.parse_args(argv)
    commands = {"generate": cmd_generate, "download": cmd_download}
    if args.command == "bench":
        from .bench import cmd_bench
        commands["bench"] = cmd_bench
    return run_guarded(lambda: commands[args.command](args))


def tune(argv: list[str]) -> int:
    from .backends import cuda_available

    ok, why = cuda_available()
    if not ok and not {"-h", "--help"} & set(argv):
        raise RawEngineError(f"rawengine tune profiles GPU kernels, but {why}")
    from .tune import tune_main

    return tune_main(argv)


def run_guarded(fn) -> int:
    try:
        return fn()
    except RawEngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # never a traceback for users; RAWENGINE_DEBUG=1 shows it
        if os.environ.get("RAWENGINE_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"error: {type(e).__name__}: {msg} (RAWENGINE_DEBUG=1 for details)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
