"""The configuration reference (``docs/configuration.md``), written from the sections themselves.

Every key's type, default, allowed values and range come from its dataclass field, and its
meaning from the field's ``doc`` (:func:`spearfl.config.setting`); the algorithm sections and
what each algorithm's counts mean come from the registry. So the reference cannot drift from
the code: a test compares the committed file with :func:`render`. Regenerate it with
``python -m spearfl.config_reference docs/configuration.md``.
"""

from __future__ import annotations

import re
import sys
import typing
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from spearfl.algorithms.base import METRIC_MEANING_KEYS
from spearfl.algorithms.registry import algorithm_names, algorithm_spec
from spearfl.config import Config, Section, all_sections

__all__ = ["render", "undocumented_keys"]

HEADER = """# Configuration reference

A run's YAML file has the sections below; every key is optional, and the defaults are the
paper's settings. An unknown key, a value of the wrong type or out of range stops the run
before any work, with a message naming the key. `--set section.key=value` overrides a key on
the command line. This page is generated from the code (`python -m spearfl.config_reference
docs/configuration.md`); a test fails when they disagree.
"""


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if args and type(None) in args:  # Optional
        inner = next(a for a in args if a is not type(None))
        return f"{_type_name(inner)} or none"
    return getattr(hint, "__name__", str(hint))


def _default(f: Field[Any]) -> str:
    if f.default_factory is not MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        value = f.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(value) or "(empty)"
    if value == "":
        return "(empty)"
    return str(value).replace("\n", "\\n")


_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _range(f: Field[Any]) -> str:
    parts = [f"{sym} {f.metadata[k]:g}" for k, sym in _BOUNDS.items() if k in f.metadata]
    if f.metadata.get("nonempty"):
        parts.append("not empty")
    if "unused" in f.metadata:
        parts.append("only the default")
    return ", ".join(parts)


def _meaning(f: Field[Any]) -> str:
    text = f.metadata.get("doc") or f.metadata.get("unused", "")
    if "unused" in f.metadata:
        text = f"kept for the paper's layout: {f.metadata['unused']}"
    return text.replace("|", "\\|")


def _readers(name: str) -> list[str]:
    return [a for a in algorithm_names() if name in {s.SECTION for s in algorithm_spec(a).sections}]


def _section(name: str, cls: type[Section]) -> list[str]:
    hints = typing.get_type_hints(cls)
    doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    doc = re.sub(r"(:\w+:)?``?([^`]+)``?", r"`\2`", doc)  # reST literals to Markdown
    readers = _readers(name)
    lines = [f"## `{name}`", ""]
    if doc and not doc.startswith(cls.__name__ + "("):
        lines.append(doc)
    if readers:
        lines.append("Read by " + ", ".join(f"`{r}`" for r in readers) + ".")
    if name == "algorithm":
        lines.append(
            "Registered: "
            + "; ".join(
                f"`{a}` (reads {', '.join(f'`{s.SECTION}`' for s in spec.sections) or 'none'}"
                + (", takes people's feedback" if spec.human_feedback else "")
                + ")"
                for a in algorithm_names()
                for spec in [algorithm_spec(a)]
            )
            + "."
        )
    lines += ["", "| key | type | default | range | meaning |", "|---|---|---|---|---|"]
    for f in fields(cls):  # type: ignore[arg-type]
        row = [f"`{f.name}`", _type_name(hints[f.name]), _default(f), _range(f), _meaning(f)]
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def _metrics() -> list[str]:
    """What each algorithm's ``n_eff``, ``wins`` and ``losses`` count."""
    lines = [
        "## What each algorithm reports",
        "",
        "Every client update reports the same record (tokens and completions generated, rollout "
        "and training seconds, first-answer accuracy, wins, losses, whether it trained) plus "
        "its own extras; the client adds `n_eff` (the update's weight in the average) and its "
        "memory. Three of those counts mean what each algorithm makes of them:",
        "",
        "| algorithm | " + " | ".join(f"`{k}`" for k in METRIC_MEANING_KEYS) + " |",
        "|---|" + "---|" * len(METRIC_MEANING_KEYS),
    ]
    for name in algorithm_names():
        meanings = algorithm_spec(name).update.METRIC_MEANINGS
        cells = [meanings[k].replace("|", "\\|") for k in METRIC_MEANING_KEYS]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return [*lines, ""]


def render() -> str:
    """The whole reference, for the algorithms registered now (the shipped ones, and any a
    loaded ``algorithm.module`` added)."""
    lines = [HEADER, "## top level", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    output = next(f for f in fields(Config) if f.name == "output_dir")
    lines += [f"| `output_dir` | str | {output.default} | the run's folder |", ""]
    for name, cls in all_sections().items():
        lines += _section(name, cls)
    lines += _metrics()
    return "\n".join(lines)


def undocumented_keys() -> list[str]:
    """Keys whose field says nothing about what they do (the reference would show a blank)."""
    return [
        f"{name}.{f.name}"
        for name, cls in all_sections().items()
        for f in fields(cls)  # type: ignore[arg-type]
        if not (f.metadata.get("doc") or f.metadata.get("unused"))
    ]


def main(argv: list[str]) -> int:
    text = render()
    if argv:
        Path(argv[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
