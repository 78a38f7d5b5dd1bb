"""How a run reaches the Hugging Face Hub: offline mode and cache folders (the ``hf`` section).

``huggingface_hub`` and ``datasets`` read ``HF_HUB_OFFLINE`` and the cache variables once, when
they are first imported, and by then the run's config is rarely loaded yet (transformers imports
them). So the settings take effect three ways: as environment variables for every process the
run starts (Ray workers), as the offline flag of those libraries when this process imported them
already, and as explicit ``cache_dir`` / ``local_files_only`` arguments where a model is loaded.

- ``hf.hf_home``: the root of every cache (``HF_HOME``); the hub cache is ``<hf_home>/hub`` and
  the datasets cache ``<hf_home>/datasets`` unless named otherwise.
- ``hf.hub_cache_dir``: the hub cache (``HF_HUB_CACHE``): downloaded repositories.
- ``hf.model_cache_dir``: where models and tokenizers are looked up and downloaded (the
  ``cache_dir`` of ``from_pretrained``); default: the hub cache.
- ``hf.dataset_cache_dir``: the ``cache_dir`` of ``datasets.load_dataset`` (``HF_DATASETS_CACHE``).
- ``hf.offline``: never contact the Hub; everything must be local or cached.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from spearfl.config import HFConfig


@dataclass(frozen=True)
class HubCaches:
    """The cache folders a run uses; None leaves the library's default (``~/.cache/huggingface``
    or the user's own ``HF_*`` variables)."""

    hub: str | None
    models: str | None
    datasets: str | None


def hub_caches(hf: HFConfig) -> HubCaches:
    home = Path(hf.hf_home).expanduser() if hf.hf_home else None
    hub = hf.hub_cache_dir or (str(home / "hub") if home else None)
    datasets = hf.dataset_cache_dir or (str(home / "datasets") if home else None)
    return HubCaches(hub=hub, models=hf.model_cache_dir or hub, datasets=datasets)


def hf_environment(hf: HFConfig) -> dict[str, str]:
    """The environment variables that carry the ``hf`` section to other processes."""
    caches = hub_caches(hf)
    flag = "1" if hf.offline else "0"
    env = {"HF_HUB_OFFLINE": flag, "HF_DATASETS_OFFLINE": flag}
    if hf.hf_home:
        env["HF_HOME"] = str(Path(hf.hf_home).expanduser())
    if caches.hub:
        env["HF_HUB_CACHE"] = caches.hub
    if caches.datasets:
        env["HF_DATASETS_CACHE"] = caches.datasets
    return env


def apply_hf_settings(hf: HFConfig) -> None:
    """Make the ``hf`` section hold in this process and in every process it starts from now on.

    Sets the environment, and the offline flag of ``huggingface_hub`` and ``datasets`` when they
    are already imported (they read the variable only at import). Cache folders reach loaded
    libraries through explicit ``cache_dir`` arguments instead (:func:`hub_caches`).
    """
    os.environ.update(hf_environment(hf))
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = hf.offline
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = hf.offline
        datasets_config.HF_DATASETS_OFFLINE = hf.offline


def model_cache_location(cache_dir: str | None) -> str:
    """The model cache folder a lookup with ``cache_dir`` uses, for messages."""
    if cache_dir:
        return cache_dir
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def not_cached_message(key: str, repo_id: str, cache_dir: str | None) -> str:
    """One line for a Hub model that is not cached while ``hf.offline`` is true."""
    option = f" --cache-dir {cache_dir}" if cache_dir else ""
    return (
        f"{key} {repo_id!r} is not in the local Hugging Face cache "
        f"({model_cache_location(cache_dir)}) and hf.offline is true; download it first "
        f"(hf download {repo_id}{option}) or set hf.offline: false"
    )


def cached_file(repo_id: str, filename: str, cache_dir: str | None) -> Path | None:
    """``filename`` of a cached Hub repository, or None (never contacts the Hub)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) else None


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a folder rather than a Hub id (``org/name``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
