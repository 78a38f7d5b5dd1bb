"""Configs shipped inside the package; ``embedded.yaml`` is the default run."""

from importlib import resources
from pathlib import Path

DEFAULT_CONFIG = "embedded.yaml"


def default_config_path() -> Path:
    """The embedded demo's config file, wherever the package is installed."""
    return Path(str(resources.files(__name__) / DEFAULT_CONFIG))
