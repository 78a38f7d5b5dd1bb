"""The ``hf`` section takes effect: cache folders, offline mode, one line for a missing model."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from conftest import tiny_paper_model_folder
from spearfl.config import HFConfig, load_config
from spearfl.hub import apply_hf_settings, hf_environment, hub_caches
from spearfl.models.loading import ModelNotAvailableError, load_base_model

REVISION = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """``source``'s files laid out as the Hub cache holds a downloaded repository."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        shutil.copy(file, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def test_cache_folders_follow_hf_home_unless_named():
    home = hub_caches(HFConfig(hf_home="/data/hf"))
    assert (home.hub, home.models, home.datasets) == (
        "/data/hf/hub",
        "/data/hf/hub",
        "/data/hf/datasets",
    )
    named = hub_caches(
        HFConfig(hf_home="/data/hf", hub_cache_dir="/fast/hub", model_cache_dir="/fast/models")
    )
    assert (named.hub, named.models, named.datasets) == (
        "/fast/hub",
        "/fast/models",
        "/data/hf/datasets",
    )
    assert hub_caches(HFConfig(dataset_cache_dir="/d")).datasets == "/d"
    assert hub_caches(HFConfig()) == hub_caches(HFConfig(offline=False))
    assert hub_caches(HFConfig()).models is None  # the library's own default


def test_environment_for_other_processes():
    assert hf_environment(HFConfig(offline=True)) == {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    env = hf_environment(HFConfig(offline=False, hf_home="/data/hf", dataset_cache_dir="/d"))
    assert env == {
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HOME": "/data/hf",
        "HF_HUB_CACHE": "/data/hf/hub",
        "HF_DATASETS_CACHE": "/d",
    }


def test_offline_reaches_libraries_imported_before_the_config(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    apply_hf_settings(HFConfig(offline=True))
    assert huggingface_hub.constants.is_offline_mode() is True
    assert datasets.config.HF_HUB_OFFLINE is True and datasets.config.HF_DATASETS_OFFLINE is True
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    apply_hf_settings(HFConfig(offline=False))
    assert huggingface_hub.constants.is_offline_mode() is False
    assert "huggingface_hub.constants" in sys.modules


@pytest.mark.parametrize("key", ["model_cache_dir", "hub_cache_dir", "hf_home"])
def test_a_cached_hub_model_is_found_where_the_config_says(key, tmp_path, tmp_path_factory):
    source = tiny_paper_model_folder("qwen2", tmp_path_factory)
    root = tmp_path / "cache"
    fake_hub_cache(root / "hub" if key == "hf_home" else root, "spearfl-tests/tiny-qwen2", source)
    cfg = load_config(
        None,
        ["model.model_name=spearfl-tests/tiny-qwen2", f"hf.{key}={root}", "hf.offline=true"],
    )
    caches = hub_caches(cfg.hf)
    loaded = load_base_model(
        cfg.model.model_name, dtype="fp32", device="cpu", cache_dir=caches.models, offline=True
    )
    assert loaded.model.config.vocab_size == 151_936
    assert len(loaded.tokenizer) == len(load_base_model(str(source), device="cpu").tokenizer)
    with pytest.raises(ModelNotAvailableError) as info:  # the same id, the default cache
        load_base_model(cfg.model.model_name, device="cpu", offline=True)
    message = str(info.value)
    assert "\n" not in message and "model.model_name 'spearfl-tests/tiny-qwen2'" in message
    assert "hf download spearfl-tests/tiny-qwen2" in message and "hf.offline: false" in message
