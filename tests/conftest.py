"""Shared fixtures: where the real benchmark rows live (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared benchmark-data folder.

    ``SPEARFL_SHARED_DATA`` overrides the default ``<repo>/../shared/data``. When the folder is
    missing the test is skipped, unless ``SPEARFL_REQUIRE_SHARED=1`` (CI), where it must exist.
    """
    folder = Path(os.environ.get("SPEARFL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not folder.is_dir():
        reason = f"shared benchmark data not found at {folder} (set SPEARFL_SHARED_DATA)"
        if os.environ.get("SPEARFL_REQUIRE_SHARED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Llama with the embedded model's tokenizer and chat template
    (``helpers.save_tiny_llama``)."""
    from helpers import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session", params=["qwen2", "llama3"])
def paper_family(request: pytest.FixtureRequest) -> str:
    """Each of the paper's model families in turn: Qwen2.5 and Llama-3."""
    return request.param


_PAPER_TOKENIZERS: dict[str, object] = {}


def paper_tokenizer_for(family: str):
    """The family's real tokenizer, built once per test session (about 3 s each)."""
    from spearfl.models.paper_tokenizers import build_tokenizer

    if family not in _PAPER_TOKENIZERS:
        _PAPER_TOKENIZERS[family] = build_tokenizer(family)
    return _PAPER_TOKENIZERS[family]


@pytest.fixture(scope="session")
def paper_tokenizer(paper_family: str):
    return paper_tokenizer_for(paper_family)


_PAPER_MODELS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def tiny_paper_model_dir(paper_family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny random Qwen2 / Llama (real vocabulary, tied embeddings, 2 layers of
    width 64) and the family's real base-model tokenizer: no chat template, plain prompts."""
    return tiny_paper_model_folder(paper_family, tmp_path_factory)


def tiny_paper_model_folder(family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny model folder of ``family`` (for tests that pick one family)."""
    from spearfl.models.paper_tokenizers import tiny_paper_model

    if family not in _PAPER_MODELS:
        tokenizer = paper_tokenizer_for(family)
        model = tiny_paper_model(family, tokenizer)
        folder = tmp_path_factory.mktemp("paper-models") / f"tiny-{family}"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _PAPER_MODELS[family] = folder
    return _PAPER_MODELS[family]
