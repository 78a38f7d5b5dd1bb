"""The table of algorithms: ``algorithm.name`` to its client-update class and config sections.

An algorithm is one module: its update class, decorated with :func:`register_algorithm`, names
the config sections (dataclasses beside it) it reads. Everything else that lists algorithms
reads this table: the values ``algorithm.name`` accepts, the YAML sections a config may hold,
the configuration reference, which algorithms take people's feedback, ``spearfl compare``'s
default list and the test that runs each one through Flower. The shipped algorithms are the
modules in :data:`BUILTIN_MODULES`; a config adds its own with ``algorithm.module`` (a module
name or a ``.py`` file), imported before the rest of the config is read.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from spearfl.algorithms.base import METRIC_MEANING_KEYS
from spearfl.config import Config, ConfigError, Section

if TYPE_CHECKING:  # the update classes import this module to register themselves
    from spearfl.algorithms.base import ClientAlgorithm
    from spearfl.feedback.base import FeedbackProvider
    from spearfl.models.policy import Policy
    from spearfl.tasks.base import Task

__all__ = [
    "BUILTIN_MODULES",
    "AlgorithmSpec",
    "algorithm_names",
    "algorithm_notes",
    "algorithm_sections",
    "algorithm_spec",
    "build_algorithm",
    "load_module",
    "register_algorithm",
]

BUILTIN_MODULES = (
    "spearfl.algorithms.spear",
    "spearfl.algorithms.feedback_sft",
    "spearfl.algorithms.grpo",
    "spearfl.algorithms.opsd",
    "spearfl.algorithms.rltf_sd",
)
"""The shipped algorithms, in the order ``spearfl compare`` runs them."""


@dataclass(frozen=True)
class AlgorithmSpec:
    """One registered algorithm."""

    name: str
    update: type[ClientAlgorithm]
    sections: tuple[type[Section], ...]
    """The config sections it reads, besides the shared ones (model, data, fl, gen, optim...)."""
    human_feedback: bool
    """Whether it can train on what people judged on a device's page (``feedback.provider:
    human``): only algorithms that learn from stored verdicts, without resampling, can."""
    module: str


_REGISTRY: dict[str, AlgorithmSpec] = {}
A = TypeVar("A", bound="type[ClientAlgorithm]")


def register_algorithm(
    name: str, *sections: type[Section], human_feedback: bool = False
) -> Callable[[A], A]:
    """Class decorator: ``algorithm.name: <name>`` runs this update, reading ``sections``."""

    def register(update: A) -> A:
        for section in sections:
            if not (isinstance(section, type) and issubclass(section, Section) and section.SECTION):
                raise TypeError(
                    f"algorithm {name!r}: {section!r} is not a config section "
                    "(a dataclass subclassing spearfl.config.Section with section='...')"
                )
        undescribed = [k for k in METRIC_MEANING_KEYS if not update.METRIC_MEANINGS.get(k)]
        if undescribed:
            raise TypeError(
                f"algorithm {name!r}: {update.__name__}.METRIC_MEANINGS must say what "
                f"{', '.join(undescribed)} count"
            )
        known = _REGISTRY.get(name)
        if known is not None and known.update.__qualname__ != update.__qualname__:
            where = f"{known.module}.{known.update.__name__}"
            raise ValueError(f"algorithm {name!r} is already registered by {where}")
        for section in sections:
            owner = _section_owner(section.SECTION)
            if owner is not None and owner.__qualname__ != section.__qualname__:
                raise ValueError(
                    f"algorithm {name!r}: config section {section.SECTION!r} is already "
                    f"declared by {owner.__module__}.{owner.__name__}"
                )
        update.name = name
        _REGISTRY[name] = AlgorithmSpec(
            name, update, tuple(sections), human_feedback, update.__module__
        )
        return update

    return register


def _section_owner(section_name: str) -> type[Section] | None:
    for spec in _REGISTRY.values():
        for section in spec.sections:
            if section.SECTION == section_name:
                return section
    return None


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def load_module(reference: str, base: Path | None = None) -> str:
    """Import the module ``algorithm.module`` names (which registers its algorithms) and return
    the reference a client process can import again: a dotted module name as given, a ``.py``
    file as an absolute path (relative to ``base``, the config's folder, when it is relative)."""
    _load_builtins()
    if reference.endswith(".py"):
        path = Path(reference).expanduser()
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        path = path.resolve()
        if not path.is_file():
            raise ConfigError(f"algorithm.module: no such file {str(path)!r}", "algorithm.module")
        tag = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        name = f"spearfl_user_algorithm_{path.stem}_{tag}"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception:
                del sys.modules[name]
                raise
        return str(path)
    try:
        importlib.import_module(reference)
    except ImportError as exc:
        raise ConfigError(
            f"algorithm.module: cannot import {reference!r}: {exc}", "algorithm.module"
        ) from None
    return reference


def algorithm_names() -> list[str]:
    """Every registered algorithm: the shipped ones in :data:`BUILTIN_MODULES` order (whatever
    order imports happened in), then the others in the order they registered."""
    _load_builtins()
    rank = {module: i for i, module in enumerate(BUILTIN_MODULES)}
    order = sorted(enumerate(_REGISTRY.values()), key=lambda e: (rank.get(e[1].module, 99), e[0]))
    return [spec.name for _, spec in order]


def algorithm_spec(name: str) -> AlgorithmSpec:
    _load_builtins()
    if name not in _REGISTRY:
        raise ConfigError(
            f"algorithm.name must be one of {', '.join(_REGISTRY)}, got {name!r}", "algorithm.name"
        )
    return _REGISTRY[name]


def algorithm_sections() -> dict[str, type[Section]]:
    """Every config section a registered algorithm reads, by YAML name, in registration order."""
    found: dict[str, type[Section]] = {}
    for spec in map(algorithm_spec, algorithm_names()):
        for section in spec.sections:
            found.setdefault(section.SECTION, section)
    return found


def algorithm_notes(cfg: Config) -> list[str]:
    """Algorithm sections set away from their defaults that the chosen algorithm never reads."""
    read = {s.SECTION for s in algorithm_spec(cfg.algorithm.name).sections}
    return [
        f"the {name} section has no effect on {cfg.algorithm.name} (it reads "
        f"{', '.join(sorted(read)) or 'no algorithm section'})"
        for name, cls in algorithm_sections().items()
        if name not in read and cfg.section(name) != cls()
    ]


def build_algorithm(
    cfg: Config, policy: Policy, task: Task, provider: FeedbackProvider
) -> ClientAlgorithm:
    return algorithm_spec(cfg.algorithm.name).update(cfg, policy, task, provider)


def human_algorithms() -> list[str]:
    """The algorithms ``feedback.provider: human`` can train."""
    _load_builtins()
    return [spec.name for spec in _REGISTRY.values() if spec.human_feedback]
