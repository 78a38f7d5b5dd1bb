"""The README's adapter snippet, run as written against a real (tiny) finished run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from helpers import local_send, tiny_run_overrides
from spearfl.config import load_config
from spearfl.federation.server import FederatedServer
from spearfl.federation.worker import forget_policy
from spearfl.models.policy import Policy

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet(section: str) -> str:
    text = README.read_text(encoding="utf-8")
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", part, flags=re.S)
    return code


@pytest.mark.slow
def test_the_adapter_snippet_asks_in_the_format_the_run_trained_with(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    forget_policy()
    cfg = load_config(None, tiny_run_overrides(tiny_model_dir, run_dir, "fl.rounds=1"))
    FederatedServer(cfg, run_dir).run(local_send(cfg))
    code = _snippet("Using a trained adapter")
    assert 'run = "runs/embedded"' in code
    scope: dict = {}
    exec(code.replace('run = "runs/embedded"', f"run = {str(run_dir)!r}"), scope)  # noqa: S102

    task, question = scope["task"], scope["question"]
    prompt = scope["inputs"]["input_ids"][0].tolist()
    policy = Policy.from_config(cfg)
    assert prompt == policy.encode(task.messages(question), task.assistant_prefix(question))
    assert scope["out"].shape[1] > len(prompt)  # it generated
    saved = load_file(str(run_dir / "adapters" / "final" / "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(scope["model"])
    assert saved and all(torch.equal(loaded[k], v) for k, v in saved.items())  # the final one


def _blocks(section: str, language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", part, flags=re.S)


def test_the_own_data_example_is_a_valid_qa_run_on_the_embedded_model(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    from spearfl.cli.main import main
    from spearfl.models.loading import EMBEDDED_NAME
    from spearfl.tasks.qa import QATask
    from spearfl.tasks.registry import build_task

    [rows] = _blocks("Your own data", "jsonl")
    [config] = _blocks("Your own data", "yaml")
    monkeypatch.chdir(tmp_path)  # the example's data.path is relative to where spearfl runs
    (tmp_path / "capitals.jsonl").write_text(rows, encoding="utf-8")
    (tmp_path / "capitals.yaml").write_text(config, encoding="utf-8")
    cfg = load_config("capitals.yaml")
    assert cfg.model.model_name == EMBEDDED_NAME and cfg.data.dataset == "qa"
    task = build_task(cfg)
    assert isinstance(task, QATask)
    data = task.load()
    assert (len(data.train), len(data.eval), task.bad_rows.count) == (6, 2, 0)
    for ex in data.train + data.eval:
        hint = task.oracle_hint(ex, "Answer: London")
        assert ex.meta["hint"] in hint and not task.leaks(hint, ex)
    # everything else a run checks, on the tiny model instead of the embedded one
    assert main(["check", "capitals.yaml", "--set", f"model.model_name={tiny_model_dir}"]) == 0
    assert "6 training examples, 2 for evaluation" in capsys.readouterr().out
