"""Generated tokens per second of the decoding loop at batch 32, on the tiny random Qwen2 at the
paper's vocabulary (151,936) with Qwen2.5's real tokenizer:

    .venv/bin/python benchmarks/decode_speed.py [--batch 32] [--new 64] [--repeats 3]

Greedy, EOS never picked (every row runs the whole budget, so all runs decode the same number
of tokens), prompts of 20-51 tokens sharing a 16-token prefix. Two settings: no stop rule, and
StrategyQA's answer-complete rule (which never fires on this random model, so it is pure cost).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from spearfl.models import generation
from spearfl.models.generation import PrefixRunner, decode
from spearfl.models.paper_tokenizers import build_tokenizer, tiny_paper_model
from spearfl.tasks.strategyqa import StrategyQATask


def stop_rule(tokenizer, task):
    """This version's evaluation stop rule for ``task``."""
    if hasattr(generation, "answer_stop"):
        return generation.answer_stop(tokenizer, task)
    return lambda ids: task.answer_complete(tokenizer.decode(ids[-12:], skip_special_tokens=True))


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = build_tokenizer("qwen2")
    model = tiny_paper_model("qwen2", tokenizer).eval()
    eos = int(tokenizer.eos_token_id)
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(100, 20000, (16,), generator=g).tolist()
    prompts = [
        prefix + torch.randint(100, 20000, (4 + i,), generator=g).tolist()
        for i in range(args.batch)
    ]

    def pick(logits: torch.Tensor) -> torch.Tensor:
        return logits.index_fill(-1, torch.tensor([eos]), float("-inf")).argmax(-1)

    results = {}
    for name, rule in (("no_stop_rule", None), ("strategyqa_stop_rule", "strategyqa")):
        stop_when = stop_rule(tokenizer, StrategyQATask()) if rule else None
        best = float("inf")
        for _ in range(args.repeats):
            runner = PrefixRunner(model, prompts, eos)
            state = runner.prefill(prompts)
            start = time.perf_counter()
            tokens, _ = decode(
                model,
                state,
                max_new_tokens=args.new,
                stop_ids={eos},
                pad_id=eos,
                pick=pick,
                stop_when=stop_when,
            )
            best = min(best, time.perf_counter() - start)
            assert sum(map(len, tokens)) == args.batch * args.new
        results[name] = {
            "decode_s": round(best, 3),
            "tokens_per_s": round(args.batch * args.new / best, 1),
        }
    print(
        json.dumps(
            {
                "batch": args.batch,
                "new_tokens": args.new,
                "vocab": model.config.vocab_size,
                "torch_threads": torch.get_num_threads(),
                **results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
