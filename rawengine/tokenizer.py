"""Tokenizer, chat template rendering and streaming detokenization for a HF model directory.

Reads tokenizer.json (via the ``tokenizers`` library), tokenizer_config.json, chat_template.jinja,
special_tokens_map.json, generation_config.json and (optionally) the model config's eos ids.
Chat templates are untrusted code: they are rendered in jinja2's ImmutableSandboxedEnvironment,
with access to unsafe attributes turned into an immediate error.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import RawEngineError

__all__ = ["Tokenizer", "StreamingDetokenizer"]

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                  "mask_token")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RawEngineError(f"{path} is not valid JSON: {e}") from None
    return d if isinstance(d, dict) else {}


def _token_str(tok: Any) -> str | None:
    """A special token in tokenizer_config / special_tokens_map: a string or {"content": ...}."""
    if tok is None:
        return None
    if isinstance(tok, str):
        return tok
    if isinstance(tok, dict):
        c = tok.get("content")
        return c if isinstance(c, str) else None
    return None


def _as_id_list(v: Any) -> list[int]:
    if v is None:
        return []
    if isinstance(v, bool):
        return []
    if isinstance(v, int):
        return [v]
    if isinstance(v, (list, tuple, set)):
        return [int(x) for x in v if isinstance(x, int) and not isinstance(x, bool)]
    return []


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


# ----------------------------------------------------------------------------------------------
# Chat templates


class _TemplateRaised(Exception):
    """Raised by raise_exception() inside a template; carries the template's own message."""


class _StrictImmutableSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment where touching an unsafe attribute fails at once.

    The stock sandbox returns an Undefined for e.g. ``''.__class__`` and only raises when that
    Undefined is used further; we raise SecurityError immediately so nothing half-renders.
    """

    def unsafe_undefined(self, obj: Any, attribute: str):  # type: ignore[override]
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (used by some templates to mark assistant text
    for training masks): rendered as its body, as transformers does when not tracking."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message: Any = "") -> None:
    raise _TemplateRaised(str(message))


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    # Like transformers: plain json.dumps, no HTML escaping (jinja's builtin tojson escapes).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template in the sandbox, with the globals/filters transformers provides."""
    env = _StrictImmutableSandbox(trim_blocks=True, lstrip_blocks=True,
                                  extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except TemplateError as e:
        line = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        raise RawEngineError(
            f"chat template does not compile{line}: {_one_line(e.message or e)}") from None


def render_chat_template(template: jinja2.Template, **variables: Any) -> str:
    try:
        return template.render(**variables)
    except _TemplateRaised as e:
        raise RawEngineError(f"chat template error: {_one_line(e)}") from None
    except SecurityError as e:
        raise RawEngineError(f"chat template rejected by sandbox: {_one_line(e)}") from None
    except TemplateError as e:
        raise RawEngineError(f"chat template error: {_one_line(e.message or e)}") from None
    except Exception as e:  # TypeError, KeyError, ... from template expressions
        raise RawEngineError(
            f"chat template failed: {type(e).__name__}: {_one_line(e)}") from None


# ----------------------------------------------------------------------------------------------
# Tokenizer


class Tokenizer:
    """A HF tokenizer (tokenizer.json) plus the metadata around it.

    Build with :meth:`from_dir`. ``encode``/``decode`` follow transformers' behaviour for the
    tokenizer (BOS from the tokenizer.json post-processor, or added when tokenizer_config says
    ``add_bos_token: true`` and the post-processor does not), but a BOS is never doubled.
    The post-processor is authoritative: ``add_bos_token: false`` does not remove a BOS it
    adds (transformers 5 behaves the same way).
    """

    def __init__(self, hf_tokenizer, *, tokenizer_config: dict | None = None,
                 special_tokens_map: dict | None = None, generation_config: dict | None = None,
                 chat_template: str | None = None, config: Any = None):
        self._tok = hf_tokenizer
        tc = dict(tokenizer_config or {})
        stm = dict(special_tokens_map or {})
        gc = dict(generation_config or {})
        self.tokenizer_config = tc

        # special token strings: tokenizer_config wins, special_tokens_map fills gaps
        self.special_tokens: dict[str, str] = {}
        for name in _SPECIAL_NAMES:
            s = _token_str(tc.get(name))
            if s is None:
                s = _token_str(stm.get(name))
            if s is not None:
                self.special_tokens[name] = s

        self.bos_token: str | None = self.special_tokens.get("bos_token")
        self.eos_token: str | None = self.special_tokens.get("eos_token")
        self.bos_token_id: int | None = self._id_of(self.bos_token)
        if self.bos_token_id is None:
            ids = (_as_id_list(gc.get("bos_token_id"))
                   or _as_id_list(_cfg_get(config, "bos_token_id")))
            if ids:
                self.bos_token_id = ids[0]
                if self.bos_token is None:
                    self.bos_token = self._tok.id_to_token(ids[0])
        self.pad_token_id: int | None = self._id_of(self.special_tokens.get("pad_token"))

        # eos ids: generation_config ∪ tokenizer_config eos_token ∪ model config
        eos: set[int] = set(_as_id_list(gc.get("eos_token_id")))
        tid = self._id_of(self.eos_token)
        if tid is not None:
            eos.add(tid)
        eos.update(_as_id_list(_cfg_get(config, "eos_token_id")))
        self.eos_token_ids: set[int] = eos
        if self.eos_token is None and eos:
            self.eos_token = self._tok.id_to_token(min(eos))

        # BOS policy
        add_bos = tc.get("add_bos_token")
        self._add_bos_explicit: bool | None = add_bos if isinstance(add_bos, bool) else None
        self._pp_adds_bos = self._post_processor_adds_bos()

        # chat template
        self.chat_template: str | None = chat_template if chat_template else None
        self._compiled: jinja2.Template | None = None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | Path, config: Any = None) -> "Tokenizer":
        """Load from a HF model directory. ``config`` (a ModelConfig, a config.json dict, or None)
        contributes its eos_token_id(s); when it is None and the directory has no
        generation_config.json, config.json's eos ids are used as transformers would."""
        from tokenizers import Tokenizer as HFTokenizer

        d = Path(path)
        tj = d / "tokenizer.json"
        if not tj.is_file():
            raise RawEngineError(f"{d} has no tokenizer.json")
        try:
            hf = HFTokenizer.from_file(str(tj))
        except Exception as e:
            raise RawEngineError(f"cannot load {tj}: {_one_line(e)}") from None

        tc = _read_json(d / "tokenizer_config.json")
        stm = _read_json(d / "special_tokens_map.json")
        gc = _read_json(d / "generation_config.json")
        if config is None and not (d / "generation_config.json").is_file():
            config = _read_json(d / "config.json") or None

        template = None
        jinja_file = d / "chat_template.jinja"
        if jinja_file.is_file():  # takes precedence, as in transformers
            template = jinja_file.read_text(encoding="utf-8")
        else:
            template = _pick_template(tc.get("chat_template"))
            if template is None:
                template = _pick_template(_read_json(d / "chat_template.json").get("chat_template"))
        return cls(hf, tokenizer_config=tc, special_tokens_map=stm, generation_config=gc,
                   chat_template=template, config=config)

    # -- basics -------------------------------------------------------------------------------

    @property
    def hf(self):
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        return self._tok.id_to_token(id)

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def _post_processor_adds_bos(self) -> bool:
        bos = self.bos_token_id
        if bos is None:
            return False
        with_sp = self._tok.encode("a", add_special_tokens=True).ids
        without = self._tok.encode("a", add_special_tokens=False).ids
        return (len(with_sp) > len(without) and with_sp[0] == bos
                and (not without or without[0] != bos))

    @property
    def adds_bos(self) -> bool:
        """Whether encode(..., add_special_tokens=True) puts a BOS in front."""
        if self.bos_token_id is None:
            return False
        return self._pp_adds_bos or bool(self._add_bos_explicit)

    # -- encode / decode ----------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not add_special_tokens:
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        ids = list(self._tok.encode(text, add_special_tokens=True).ids)
        bos = self.bos_token_id
        if bos is None:
            return ids
        if self._pp_adds_bos:
            if len(ids) >= 2 and ids[1] == bos:
                ids = ids[1:]  # the text already starts with BOS: don't double it
        elif self._add_bos_explicit and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def detokenizer(self, skip_special_tokens: bool = True) -> "StreamingDetokenizer":
        return StreamingDetokenizer(self, skip_special_tokens=skip_special_tokens)

    # -- chat ---------------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list | None = None, **kwargs: Any) -> str:
        """Render ``messages`` with the model's chat template (sandboxed). Extra keyword
        arguments become template variables (e.g. ``enable_thinking=False``)."""
        if not self.chat_template:
            raise RawEngineError("this tokenizer has no chat template")
        if self._compiled is None:
            self._compiled = compile_chat_template(self.chat_template)
        variables: dict[str, Any] = dict(self.special_tokens)
        variables.setdefault("bos_token", self.bos_token)
        variables.setdefault("eos_token", self.eos_token)
        variables.update(kwargs)
        variables.update(messages=messages, add_generation_prompt=add_generation_prompt,
                         tools=tools, documents=kwargs.get("documents"))
        return render_chat_template(self._compiled, **variables)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    **kwargs: Any) -> list[int]:
        """Render then tokenize, like transformers' apply_chat_template(tokenize=True): the
        template supplies any BOS text itself, so no special tokens are added on top."""
        prompt = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                          **kwargs)
        return self.encode(prompt, add_special_tokens=False)


def _cfg_get(config: Any, key: str) -> Any:
    if config is None:
        return None
    if isinstance(config, dict):
        return config.get(key)
    return getattr(config, key, None)


def _pick_template(t: Any) -> str | None:
    """tokenizer_config's chat_template: a string, or a list of {"name", "template"}."""
    if isinstance(t, str):
        return t or None
    if isinstance(t, list):
        named = {x.get("name"): x.get("template") for x in t if isinstance(x, dict)}
        v = named.get("default")
        if isinstance(v, str):
            return v
        for v in named.values():
            if isinstance(v, str):
                return v
    return None


# ----------------------------------------------------------------------------------------------
# Streaming detokenization


class StreamingDetokenizer:
    """Incremental detokenizer: ``feed(id)`` returns only newly completed text.

    Offset-based: we decode a short window ``ids[prefix:]`` and diff it against the decode of
    ``ids[prefix:read]`` (text already emitted), so decoders that depend on context (metaspace /
    SentencePiece leading spaces, byte-level BPE) behave as in a full decode. Text ending in
    U+FFFD (an incomplete UTF-8 character split across tokens) is held back until completed.
    The window is kept short, so each step costs O(1) amortised.
    """

    # Pending tokens after which a trailing U+FFFD is taken as real (it can't be a partial
    # UTF-8 character any more: those span at most 4 byte tokens).
    MAX_PENDING = 8

    def __init__(self, tokenizer: Tokenizer | Any, skip_special_tokens: bool = True):
        self._tok = tokenizer.hf if isinstance(tokenizer, Tokenizer) else tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._window: list[int] = []  # ids[prefix_offset:]
        self._read = 0                # read_offset - prefix_offset (within the window)
        self._prefix_text = ""        # decode(window[:read])
        self._pieces: list[str] = []

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def feed(self, token_id: int) -> str:
        self._window.append(int(token_id))
        text = self._decode(self._window)
        pending = len(self._window) - self._read
        if text.endswith("\ufffd") and pending < self.MAX_PENDING:
            return ""
        new = text[len(self._prefix_text):]
        # slide: the just-completed tokens become the context for the next step
        self._window = self._window[self._read:]
        self._read = len(self._window)
        self._prefix_text = self._decode(self._window) if self._window else ""
        if new:
            self._pieces.append(new)
        return new

    def put(self, token_id: int) -> str:
        return self.feed(token_id)

    def finalize(self) -> str:
        """Flush whatever is held back (possibly ending in U+FFFD if the output was cut
        mid-character) and reset."""
        text = self._decode(self._window) if self._window else ""
        new = text[len(self._prefix_text):] if len(text) > len(self._prefix_text) else ""
        self._window = []
        self._read = 0
        self._prefix_text = ""
        if new:
            self._pieces.append(new)
        return new

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self._pieces)
