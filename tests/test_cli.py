"""`rawengine` on the command line: answers, streams, and bad input gets one clear line."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TINY = Path(__file__).parent / "fixtures" / "tiny_llama"


def run(*args, stdin=None, timeout=120):
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAWENGINE_WEIGHTS_DIR="/nonexistent-weights")
    return subprocess.run([sys.executable, "-m", "rawengine.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(r, fragment):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert fragment in lines[0], lines[0]


def test_generate_on_a_local_model_streams_and_reports_stats():
    r = run("generate", "--model", str(TINY), "--device", "cpu", "-n", "8", "hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    assert "prefill" in r.stderr and "decode" in r.stderr and "generated 8 tok" in r.stderr


def test_prompt_from_stdin_and_seeded_sampling_is_reproducible():
    args = ("generate", "--model", str(TINY), "--device", "cpu", "-n", "8", "--temperature",
            "1.0", "--top-k", "20", "--seed", "3", "-q", "-")
    a, b = run(*args, stdin="hello"), run(*args, stdin="hello")
    assert a.returncode == 0 and a.stdout == b.stdout


def test_import_and_cpu_generation_never_import_torch():
    code = ("import sys, rawengine\n"
            "from rawengine import LLM, SamplingParams\n"
            f"llm = LLM({str(TINY)!r}, device='cpu')\n"
            "out = llm.generate(['hi'], SamplingParams(max_tokens=4, temperature=0))\n"
            "assert len(out[0].token_ids) == 4\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args,fragment", [
    (["--model", "/no/such/model"], "/no/such/model"),
    (["--top-p", "1.5"], "top_p"),
    (["--temperature", "nan"], "temperature"),
    (["--max-tokens", "-3"], "max_tokens"),
    (["--max-model-len", "4"], "context"),
    (["--device", "cuda"], "cuda"),
])
def test_bad_input_gets_one_clear_line(args, fragment):
    base = ["generate", "--device", "cpu", "--model", str(TINY)]
    r = run(*base, *args, "a long enough prompt to overflow a tiny context")
    assert_one_line_error(r, fragment)


def test_no_prompt_is_an_error():
    assert_one_line_error(run("generate", "--model", str(TINY)), "no prompt")


def test_unsupported_model_type_names_supported_ones(tmp_path):
    shutil.copytree(TINY, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(dict(cfg, model_type="gpt2")))
    r = run("generate", "--model", str(tmp_path / "m"), "--device", "cpu", "hi")
    assert_one_line_error(r, "llama, mistral, qwen2")


def test_truncated_weights_and_wrong_shapes_are_reported(tmp_path):
    shutil.copytree(TINY, tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:5000])
    assert_one_line_error(run("generate", "--model", str(tmp_path / "m"), "hi"), "truncated")
    shutil.rmtree(tmp_path / "m")
    shutil.copytree(TINY, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(dict(cfg, intermediate_size=100)))
    r = run("generate", "--model", str(tmp_path / "m"), "--device", "cpu", "hi")
    assert_one_line_error(r, "mis-shaped")


def test_stop_strings_end_generation_before_the_stop_text():
    from rawengine import LLM, SamplingParams

    llm = LLM(str(TINY), device="cpu")
    full = llm.generate(["hello"], SamplingParams(max_tokens=24, temperature=0))[0].text
    stop = full[5:7]
    cut = llm.generate(["hello"], SamplingParams(max_tokens=24, temperature=0, stop=[stop]))[0]
    assert cut.text == full[:full.find(stop)]
    streamed = "".join(llm.stream("hello", SamplingParams(max_tokens=24, temperature=0,
                                                          stop=[stop])))
    assert streamed == cut.text and cut.finish_reason == "stop"


def test_generation_config_defaults_follow_hf(tmp_path):
    """No do_sample in generation_config.json means greedy (HF); do_sample true keeps the
    model's sampling settings; explicit arguments win."""
    from rawengine import LLM

    shutil.copytree(TINY, tmp_path / "m")
    llm = LLM(str(tmp_path / "m"), device="cpu")
    assert llm.default_params().temperature == 0.0
    (tmp_path / "m" / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.7, "top_p": 0.9}))
    p = llm.default_params()
    assert (p.temperature, p.top_p) == (0.7, 0.9)
    assert llm.default_params(temperature=0.2).temperature == 0.2
