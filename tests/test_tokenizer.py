"""Tests for rawengine.tokenizer: encode/decode, BOS policy, eos ids, chat templates (incl. the
sandbox), and the streaming detokenizer. Tokenizers are built in-test with `tokenizers`."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from rawengine.errors import RawEngineError
from rawengine.tokenizer import StreamingDetokenizer, Tokenizer

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SMOLLM2_GOLDEN = REPO / "tests" / "fixtures" / "smollm2_golden.json"

WAVE = "\U0001F44B\U0001F3FD"  # 👋🏽 (hand + skin tone modifier)
FLAG_FR = "\U0001F1EB\U0001F1F7"  # 🇫🇷 (two regional indicators)
FAMILY = "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466"  # family, ZWJ sequence
CJK = "你好，世界！今天天气很好。日本語のテキストも。한국어 문장."

CORPUS = [
    "Hello world! This is a small corpus for training a tiny tokenizer.",
    "The quick brown fox jumps over the lazy dog.",
    "Streaming detokenization must never split a character in half.",
    f"Emoji: {WAVE} {FLAG_FR} {FAMILY} are multi-codepoint sequences.",
    "你好，世界！今天天气很好。我们正在测试分词器。",
    "日本語のテキストもあります。",
    "Hello hello hello world world tokenizer tokenizer.",
]

TEXTS = {
    "ascii": "Hello world, the quick brown fox!",
    "wave": f"Hi {WAVE}!",
    "flag": f"Bonjour {FLAG_FR} la France",
    "family": f"{FAMILY} family{FAMILY}",
    "emoji_only": WAVE + FLAG_FR + FAMILY + "\U0001F600\U0001F680",
    "cjk": CJK,
    "mixed": f"Mixed: 你好 {WAVE} world 世界 {FLAG_FR}\n  new line\ttab {FAMILY} end.",
    "unseen": "Ünïcödé ñ ß Ω ∑ 𝄞 \u00e9t\u00e9",  # not in the corpus
    "spaces": "  leading and  double  spaces  ",
}

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

MESSAGES = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": f"Thanks {WAVE}! 你好"},
]


# ----------------------------------------------------------------------------------------------
# tokenizer builders


def _byte_level_bpe(specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>")):
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=500, min_frequency=1, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def _metaspace_bpe(decoder: str = "legacy", bos_pp: bool = True):
    """SentencePiece-style: metaspace, byte fallback for chars outside the alphabet (emoji are
    not in the training corpus), optional "<s> $A" post-processor."""
    corpus = [s for s in CORPUS if "Emoji" not in s]
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=1,
                                  special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    # add the 256 byte-fallback tokens as ordinary vocab entries and turn byte_fallback on
    d = json.loads(tok.to_str())
    vocab = d["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    d["model"]["byte_fallback"] = True
    d["model"]["fuse_unk"] = True
    tok = tokenizers.Tokenizer.from_str(json.dumps(d))
    if decoder == "legacy":  # Llama-2 style
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:  # Mistral / newer style
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Sequence([decoders.ByteFallback(),
                                         decoders.Metaspace(replacement="\u2581",
                                                            prepend_scheme="first")])
    if bos_pp:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return tok


@pytest.fixture(scope="module")
def bl_hf():
    return _byte_level_bpe()


@pytest.fixture(scope="module")
def ms_hf():
    return _metaspace_bpe("legacy")


@pytest.fixture(scope="module")
def ms2_hf():
    return _metaspace_bpe("metaspace")


def _write_model(d: Path, hf, tokenizer_config=None, generation_config=None, files=None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    hf.save(str(d / "tokenizer.json"))
    if tokenizer_config is not None:
        (d / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if generation_config is not None:
        (d / "generation_config.json").write_text(json.dumps(generation_config))
    for name, text in (files or {}).items():
        (d / name).write_text(text if isinstance(text, str) else json.dumps(text))
    return d


@pytest.fixture
def chatml_tok(tmp_path, bl_hf):
    d = _write_model(tmp_path / "chatml", bl_hf, tokenizer_config={
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHATML,
        "add_prefix_space": False,
    }, generation_config={"eos_token_id": 2})
    return Tokenizer.from_dir(d)


# ----------------------------------------------------------------------------------------------
# streaming detokenizer


def _stream(tok, ids, skip_special_tokens=True):
    det = StreamingDetokenizer(tok, skip_special_tokens=skip_special_tokens)
    pieces = [det.feed(i) for i in ids]
    pieces.append(det.finalize())
    return pieces


@pytest.mark.parametrize("kind", ["byte_level", "metaspace_legacy", "metaspace"])
@pytest.mark.parametrize("name", list(TEXTS))
def test_stream_concat_equals_full_decode(kind, name, bl_hf, ms_hf, ms2_hf, tmp_path):
    hf = {"byte_level": bl_hf, "metaspace_legacy": ms_hf, "metaspace": ms2_hf}[kind]
    tok = Tokenizer.from_dir(_write_model(tmp_path / kind, hf, tokenizer_config={}))
    text = TEXTS[name]
    ids = tok.encode(text, add_special_tokens=False)
    full = tok.decode(ids)
    pieces = _stream(tok, ids)
    assert "".join(pieces) == full
    for p in pieces:
        assert "\ufffd" not in p, (kind, name, pieces)
    if kind == "byte_level" or name != "unseen":
        assert full == text or full.strip() == text.strip()


def test_stream_actually_splits_multibyte_chars(bl_hf, ms_hf):
    """Make sure the emoji tests above exercise the hold-back path: some single tokens decode
    to an incomplete UTF-8 sequence."""
    for hf in (bl_hf, ms_hf):
        ids = hf.encode(TEXTS["emoji_only"], add_special_tokens=False).ids
        singles = [hf.decode([i]) for i in ids]
        assert any("\ufffd" in s for s in singles)
        det = StreamingDetokenizer(hf)
        outs = [det.feed(i) for i in ids]
        assert "" in outs  # something was held back
        assert "".join(outs) + det.finalize() == hf.decode(ids)


def test_stream_metaspace_keeps_interior_spaces(ms_hf):
    ids = ms_hf.encode("Hello world tokenizer", add_special_tokens=False).ids
    det = StreamingDetokenizer(ms_hf)
    out = "".join(det.feed(i) for i in ids) + det.finalize()
    assert out == "Hello world tokenizer" == ms_hf.decode(ids)
    assert det.text == out


@pytest.mark.parametrize("skip", [True, False])
def test_stream_with_special_tokens(chatml_tok, skip):
    ids = (chatml_tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
           + chatml_tok.encode(f"Sure {WAVE} 你好", add_special_tokens=False)
           + [chatml_tok.token_to_id("<|im_end|>")])
    pieces = _stream(chatml_tok, ids, skip_special_tokens=skip)
    assert "".join(pieces) == chatml_tok.decode(ids, skip_special_tokens=skip)
    assert all("\ufffd" not in p for p in pieces)
    assert ("<|im_end|>" in "".join(pieces)) is (not skip)


def test_stream_finalize_flushes_truncated_char(bl_hf):
    ids = bl_hf.encode(WAVE, add_special_tokens=False).ids
    # find a prefix of the ids that decodes to an incomplete character
    cut = next(k for k in range(1, len(ids)) if bl_hf.decode(ids[:k]).endswith("\ufffd"))
    det = StreamingDetokenizer(bl_hf)
    outs = [det.feed(i) for i in ids[:cut]]
    tail = det.finalize()
    assert "".join(outs) + tail == bl_hf.decode(ids[:cut])
    assert tail.endswith("\ufffd")


def test_stream_real_replacement_char_is_not_held_forever(bl_hf):
    # invalid UTF-8 (a lone continuation byte) repeated: decode really ends with U+FFFD
    text = "ok"
    ids = bl_hf.encode(text, add_special_tokens=False).ids
    cont = bl_hf.token_to_id("\u0122")  # byte-level char for 0x80 (a lone continuation byte)
    assert cont is not None and bl_hf.decode([cont]) == "\ufffd"
    stream = ids + [cont] * 20 + ids
    det = StreamingDetokenizer(bl_hf)
    outs = [det.feed(i) for i in stream]
    emitted_before_end = "".join(outs)
    assert "ok" in emitted_before_end[2:]  # the trailing "ok" came out before finalize
    assert emitted_before_end + det.finalize() == bl_hf.decode(stream)


def test_stream_is_amortised_constant_work(bl_hf):
    """Count the ids decoded per step: it must not grow with the output length."""

    class Counting:
        def __init__(self, hf):
            self.hf, self.n = hf, 0

        def decode(self, ids, skip_special_tokens=True):
            self.n += len(ids)
            return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    text = " ".join([TEXTS["mixed"], TEXTS["cjk"], TEXTS["emoji_only"]] * 40)
    ids = bl_hf.encode(text, add_special_tokens=False).ids
    assert len(ids) > 1000
    c = Counting(bl_hf)
    det = StreamingDetokenizer(c)
    out = "".join(det.feed(i) for i in ids) + det.finalize()
    assert out == bl_hf.decode(ids)
    assert c.n <= 12 * len(ids)


# ----------------------------------------------------------------------------------------------
# encode / decode / BOS policy


def test_encode_decode_roundtrip(chatml_tok):
    for text in TEXTS.values():
        ids = chatml_tok.encode(text)
        assert chatml_tok.decode(ids) == text


def test_bos_from_post_processor_not_doubled(tmp_path, ms_hf):
    tok = Tokenizer.from_dir(_write_model(tmp_path / "m", ms_hf, tokenizer_config={
        "bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>"}))
    bos = tok.bos_token_id
    assert bos == ms_hf.token_to_id("<s>")
    plain = tok.encode("Hello world", add_special_tokens=False)
    assert tok.encode("Hello world") == [bos] + plain
    assert tok.adds_bos
    # the text already carries BOS (e.g. rendered by a chat template): no second BOS
    ids = tok.encode("<s>Hello world")
    assert ids[0] == bos and ids[1] != bos
    assert tok.encode("<s>Hello world", add_special_tokens=False)[0] == bos


def test_add_bos_token_true_without_post_processor(tmp_path):
    hf = _metaspace_bpe("legacy", bos_pp=False)
    tok = Tokenizer.from_dir(_write_model(tmp_path / "m", hf, tokenizer_config={
        "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}))
    bos = tok.bos_token_id
    plain = tok.encode("Hello", add_special_tokens=False)
    assert plain[0] != bos
    assert tok.encode("Hello") == [bos] + plain
    assert tok.encode("<s>Hello") == tok.encode("<s>Hello", add_special_tokens=False)
    assert tok.encode("<s>Hello").count(bos) == 1


def test_post_processor_is_authoritative_over_add_bos_token_false(tmp_path, ms_hf):
    # transformers 5 keeps the tokenizer.json post-processor's BOS here too
    tok = Tokenizer.from_dir(_write_model(tmp_path / "m", ms_hf, tokenizer_config={
        "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False}))
    assert tok.adds_bos
    assert tok.encode("Hello") == [tok.bos_token_id] + tok.encode("Hello", add_special_tokens=False)


def test_no_bos_for_byte_level_without_add_bos(chatml_tok):
    assert not chatml_tok.adds_bos
    assert chatml_tok.encode("Hello") == chatml_tok.encode("Hello", add_special_tokens=False)


# ----------------------------------------------------------------------------------------------
# eos ids


def test_eos_union_generation_config_list_and_tokenizer_config(tmp_path, bl_hf):
    d = _write_model(tmp_path / "m", bl_hf,
                     tokenizer_config={"eos_token": {"content": "<|im_end|>"}},
                     generation_config={"eos_token_id": [0, 1]})
    tok = Tokenizer.from_dir(d)
    im_end = bl_hf.token_to_id("<|im_end|>")
    assert tok.eos_token_ids == {0, 1, im_end}
    # the model config's eos ids join the union when passed in (dict or object)
    assert Tokenizer.from_dir(d, config={"eos_token_id": 7}).eos_token_ids == {0, 1, 7, im_end}

    class Cfg:
        eos_token_id = [8, 9]

    assert Tokenizer.from_dir(d, config=Cfg()).eos_token_ids == {0, 1, 8, 9, im_end}


def test_eos_int_and_special_tokens_map(tmp_path, bl_hf):
    d = _write_model(tmp_path / "m", bl_hf, tokenizer_config={},
                     generation_config={"eos_token_id": 5},
                     files={"special_tokens_map.json": {"eos_token": "<|endoftext|>",
                                                        "bos_token": "<|endoftext|>"}})
    tok = Tokenizer.from_dir(d)
    eot = bl_hf.token_to_id("<|endoftext|>")
    assert tok.eos_token_ids == {5, eot}
    assert tok.eos_token == "<|endoftext|>" and tok.bos_token_id == eot


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(RawEngineError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


# ----------------------------------------------------------------------------------------------
# chat templates


def test_chatml_template_matches_expected(chatml_tok):
    assert chatml_tok.has_chat_template
    expected = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4.<|im_end|>\n"
        f"<|im_start|>user\nThanks {WAVE}! 你好<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert chatml_tok.apply_chat_template(MESSAGES) == expected
    assert chatml_tok.apply_chat_template(MESSAGES, add_generation_prompt=False) == \
        expected[: -len("<|im_start|>assistant\n")]
    sys_msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert chatml_tok.apply_chat_template(sys_msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n")
    ids = chatml_tok.encode_chat(MESSAGES)
    assert ids == chatml_tok.encode(expected, add_special_tokens=False)
    assert ids[0] == chatml_tok.token_to_id("<|im_start|>")
    assert chatml_tok.decode(ids, skip_special_tokens=False) == expected


def _llama3_tok(tmp_path, bl_hf):
    specials = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>")
    hf = _byte_level_bpe(specials)
    bos = hf.token_to_id("<|begin_of_text|>")
    hf.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    d = _write_model(tmp_path / "llama3", hf, tokenizer_config={
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3},
        generation_config={"eos_token_id": [hf.token_to_id("<|end_of_text|>"),
                                            hf.token_to_id("<|eot_id|>")]})
    return Tokenizer.from_dir(d)


def test_llama3_template_with_bos(tmp_path, bl_hf):
    tok = _llama3_tok(tmp_path, bl_hf)
    msgs = [{"role": "system", "content": "  You are terse.  "},
            {"role": "user", "content": "Hello!\n"}]
    expected = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse."
                "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok.apply_chat_template(msgs) == expected
    ids = tok.encode_chat(msgs)
    bos = tok.bos_token_id
    assert ids[0] == bos and ids.count(bos) == 1  # the template's BOS, not doubled
    assert tok.encode(expected) == ids  # encode() also refuses to double it
    assert tok.eos_token_ids == {tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")}


def test_chat_template_jinja_file_takes_precedence(tmp_path, bl_hf):
    d = _write_model(tmp_path / "m", bl_hf, tokenizer_config={"chat_template": CHATML},
                     files={"chat_template.jinja": "JINJA{{ messages|length }}"})
    assert Tokenizer.from_dir(d).apply_chat_template(MESSAGES) == "JINJA3"


def test_chat_template_named_list(tmp_path, bl_hf):
    d = _write_model(tmp_path / "m", bl_hf, tokenizer_config={"chat_template": [
        {"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}]})
    assert Tokenizer.from_dir(d).apply_chat_template(MESSAGES) == "DEFAULT"


def test_no_chat_template(tmp_path, bl_hf):
    tok = Tokenizer.from_dir(_write_model(tmp_path / "m", bl_hf, tokenizer_config={}))
    assert not tok.has_chat_template
    with pytest.raises(RawEngineError, match="no chat template"):
        tok.apply_chat_template(MESSAGES)


def _tok_with_template(tmp_path, hf, template, **tc):
    d = _write_model(tmp_path / "t", hf, tokenizer_config={"chat_template": template,
                                                            "bos_token": "<|im_start|>",
                                                            "eos_token": "<|im_end|>", **tc})
    return Tokenizer.from_dir(d)


def test_template_helpers(tmp_path, bl_hf):
    tpl = ("{{ messages[0] | tojson }}|{{ {'b': 1, 'a': '<é>'} | tojson(sort_keys=True) }}|"
           "{{ strftime_now('%Y') }}|{{ tools is none }}|{{ bos_token }}{{ eos_token }}|"
           "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}"
           "{% endfor %}|{% generation %}GEN{% endgeneration %}|{{ custom }}")
    tok = _tok_with_template(tmp_path, bl_hf, tpl)
    out = tok.apply_chat_template([{"role": "user", "content": "a \"q\" <b>"}], custom="X")
    year = datetime.now().strftime("%Y")
    assert out == ('{"role": "user", "content": "a \\"q\\" <b>"}|{"a": "<é>", "b": 1}|'
                   f"{year}|True|<|im_start|><|im_end|>|user|GEN|X")


def test_raise_exception_gives_template_message(tmp_path, bl_hf):
    tpl = ("{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
           "{{ raise_exception('Only user and assistant roles are supported!') }}"
           "{% endif %}{{ m['content'] }}{% endfor %}")
    tok = _tok_with_template(tmp_path, bl_hf, tpl)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "x"
    with pytest.raises(RawEngineError) as ei:
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    msg = str(ei.value)
    assert "Only user and assistant roles are supported!" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("tpl", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__['os'] }}",
    "{{ messages.append(1) }}",
    "{% set x = messages.pop() %}",
    "{{ messages[0].update({'role': 'system'}) }}",
    "{{ messages[0].clear() }}",
    "{% set _ = messages.__setitem__(0, 1) %}",
    "{{ raise_exception.__globals__ }}",
    "{{ (messages|first).__class__.__base__.__subclasses__() }}",
    "{{ lipsum.__globals__['os'].system('echo pwned') }}",
    "{{ ''.format.__globals__ }}",
    "{{ '{0.__class__}'.format(messages) }}",
])
def test_malicious_templates_are_rejected(tmp_path, bl_hf, tpl):
    tok = _tok_with_template(tmp_path, bl_hf, tpl)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    snapshot = json.dumps(msgs)
    with pytest.raises(RawEngineError) as ei:
        tok.apply_chat_template(msgs)
    assert "\n" not in str(ei.value)
    assert json.dumps(msgs) == snapshot  # nothing was mutated


def test_security_error_is_wrapped(tmp_path, bl_hf):
    tok = _tok_with_template(tmp_path, bl_hf, "{{ messages.append(1) }}")
    with pytest.raises(RawEngineError, match="sandbox") as ei:
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert ei.value.__cause__ is None  # one clean user-facing error


@pytest.mark.parametrize("tpl,match", [
    ("{% for m in messages %}{{ m.content }", "compile"),
    ("{{ undefined_thing.attr }}", "undefined"),
    ("{{ messages[0]['content'] + 1 }}", "TypeError"),
])
def test_template_errors_are_raw_engine_errors(tmp_path, bl_hf, tpl, match):
    tok = _tok_with_template(tmp_path, bl_hf, tpl)
    with pytest.raises(RawEngineError, match=match):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


# ----------------------------------------------------------------------------------------------
# the real default model (skipped until it and its golden ids exist)


@pytest.fixture(scope="module")
def smollm2(default_model_dir):
    return Tokenizer.from_dir(default_model_dir)


def test_smollm2_tokenizer_basics(smollm2):
    assert smollm2.has_chat_template
    assert smollm2.token_to_id("<|im_end|>") in smollm2.eos_token_ids
    prompt = smollm2.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    text = f"Hello {WAVE} 你好 {FAMILY}"
    ids = smollm2.encode(text, add_special_tokens=False)
    pieces = _stream(smollm2, ids)
    assert "".join(pieces) == smollm2.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)


def _golden():
    if not SMOLLM2_GOLDEN.is_file():
        pytest.skip(f"{SMOLLM2_GOLDEN} not present")
    data = json.loads(SMOLLM2_GOLDEN.read_text(encoding="utf-8"))
    cases = data.get("cases") if isinstance(data, dict) else None
    if not cases:
        pytest.skip("smollm2_golden.json has no cases")
    return data, cases


def test_smollm2_golden_prompt_ids(smollm2):
    """tools/make_golden.py layout: cases[] with prompt, chat_template (bool), rendered,
    prompt_ids (transformers: tok(rendered, add_special_tokens=True))."""
    data, cases = _golden()
    n_chat = 0
    for case in cases:
        name, want = case.get("name"), case["prompt_ids"]
        if case.get("chat_template"):
            n_chat += 1
            msgs = case.get("messages") or [{"role": "user", "content": case["prompt"]}]
            rendered = smollm2.apply_chat_template(msgs, add_generation_prompt=True)
            if "rendered" in case:
                assert rendered == case["rendered"], name
            assert smollm2.encode_chat(msgs) == want, name
            assert smollm2.encode(rendered) == want, name  # SmolLM2 adds no BOS
        else:
            assert smollm2.encode(case.get("rendered", case["prompt"])) == want, name
    assert n_chat > 0
    if isinstance(data.get("eos_token_id"), int):
        assert data["eos_token_id"] in smollm2.eos_token_ids


def test_smollm2_golden_generated_text_streams(smollm2):
    _, cases = _golden()
    for case in cases:
        gen = case.get("generated_ids")
        if not gen:
            continue
        if "generated_text" in case:
            assert smollm2.decode(gen, skip_special_tokens=False) == case["generated_text"]
        for skip in (True, False):
            pieces = _stream(smollm2, gen, skip_special_tokens=skip)
            assert "".join(pieces) == smollm2.decode(gen, skip_special_tokens=skip)
