"""Nothing read from disk can run code: safetensors/JSON only, no remote code by default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from spearfl.config import load_config
from spearfl.federation.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "spearfl"
UNSAFE = re.compile(
    r"torch\.load\(|pickle\.loads?\(|weights_only\s*=\s*False|trust_remote_code\s*=\s*True"
)


def test_no_unpickling_or_remote_code_anywhere_in_the_package():
    offenders = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if UNSAFE.search(line)
    ]
    assert offenders == []
    assert load_config(None, []).model.trust_remote_code is False


def test_checkpoint_round_trip_and_a_pickle_in_its_place_is_refused(tmp_path):
    adapter = {"a.lora_A.weight": torch.arange(6.0).view(2, 3)}
    optimizer = {"kind": "fedadam", "step": 3, "m": {"a.lora_A.weight": torch.ones(2, 3)},
                 "v": {"a.lora_A.weight": torch.full((2, 3), 2.0)}}  # fmt: skip
    save_checkpoint(tmp_path, Checkpoint(5, adapter, optimizer, torch.get_rng_state(), None, 9.5))
    back = load_checkpoint(tmp_path)
    assert back.round_num == 5 and back.elapsed_seconds == 9.5
    assert torch.equal(back.adapter["a.lora_A.weight"], adapter["a.lora_A.weight"])
    v = back.optimizer["v"]["a.lora_A.weight"]
    assert back.optimizer["step"] == 3 and torch.equal(v, optimizer["v"]["a.lora_A.weight"])
    assert not (tmp_path / (CHECKPOINT_FILE + ".tmp")).exists()

    torch.save(adapter, tmp_path / CHECKPOINT_FILE)  # a pickle where the checkpoint should be
    with pytest.raises(Exception, match="(?i)header|safetensors|deserializ"):
        load_checkpoint(tmp_path)
