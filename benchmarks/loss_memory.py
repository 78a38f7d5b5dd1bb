"""Peak memory of one SPEAR and one GRPO micro-step at the paper's logits shape, old path vs new.

Shape: R rows of 512 completion tokens (SPEAR's wins carry an EOS on top) after 64 prompt
tokens, Qwen2.5's vocabulary of 151,936, on a tiny random Qwen2 (2 layers of width 64, LoRA r=16
on every projection) so that the logits dominate memory; float32 on a CPU, no checkpointing.

- ``new``: the code as it is (``algorithms/logits.py``; forward passes of at most
  ``scoring.LOGITS_BUDGET`` logits when ``optim.micro_batch_size`` is unset).
- ``old``: the previous maths, kept here as its reference implementation: one forward pass over
  all rows of the micro-step, logits of the last K + 1 positions, ``log_softmax(logits.float())``
  gathered at the targets.

Each case runs in a fresh subprocess; its peak is the process's peak RSS (``ru_maxrss``) during
the micro-step minus the peak before it (model, data, imports). SPEAR rows are half wins, half
losses (``optim.batch_size`` = R / 2); GRPO rows are R / 2 prompts x 2 samples from a scripted
generator (every group has one right and one wrong sample), so both cases score the same
sequences old and new, and the losses and LoRA gradients are compared at equal row counts.

    PYTHONPATH=src nice -n 10 python benchmarks/loss_memory.py --old-rows 2 4 8 --new-rows 2 4 8 32
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

PROMPT_TOKENS = 64
COMPLETION_TOKENS = 512


# ------------------------------------------------------------ the old path, for reference
def old_target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def old_completion_logits(model: torch.nn.Module, batch) -> torch.Tensor:
    cache = None
    mask = batch.attention_mask
    if batch.prefix_ids is not None:
        cache = model(input_ids=batch.prefix_ids, use_cache=True, logits_to_keep=1).cache
        rows = batch.input_ids.shape[0]
        cache.batch_repeat_interleave(rows)
        ones = torch.ones((rows, batch.prefix_ids.shape[1]), dtype=mask.dtype, device=mask.device)
        mask = torch.cat([ones, mask], dim=1)
    out = model(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=batch.position_ids,
        cache=cache,
        logits_to_keep=batch.targets.shape[1] + 1,
        use_cache=cache is not None,
    )
    return out.logits[:, :-1, :]


def one_pass(lengths, rows_per_pass, vocab):
    return [slice(0, len(lengths))]


def use_old_path() -> None:
    from spearfl.algorithms import opsd, policy_gradient, scoring, spear

    for module in (scoring, spear, opsd):
        module.completion_logits = old_completion_logits
    for module in (scoring, spear):
        module.target_logprobs = old_target_logprobs
    for module in (spear, opsd, policy_gradient):
        module.forward_passes = one_pass


# ------------------------------------------------------------------ one measured case
def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _ids(rng: random.Random, n: int) -> tuple[int, ...]:
    return tuple(rng.randrange(1000, 150_000) for _ in range(n))


def run_case(model_dir: str, algorithm: str, rows: int, path: str, grads_out: str) -> dict:
    from spearfl.algorithms.grpo import GRPOUpdate
    from spearfl.algorithms.policy_gradient import RoundState
    from spearfl.algorithms.rollout import Trace
    from spearfl.algorithms.spear import SpearMicroStep, SpearUpdate
    from spearfl.config import load_config
    from spearfl.feedback.oracle import OracleFeedback
    from spearfl.models.generation import Completion
    from spearfl.models.policy import Policy
    from spearfl.tasks.embedded import EmbeddedCategoryTask

    class ScriptedTask(EmbeddedCategoryTask):
        def is_correct(self, example, completion):
            return completion == "right"

    if path == "old":
        use_old_path()
    cfg = load_config(
        None,
        [
            f"model.model_name={model_dir}",
            "model.dtype=fp32",
            "model.gradient_checkpointing=false",
            "model.max_seq_len=2048",
            "lora.dropout=0.0",
            f"optim.batch_size={rows // 2}",
            "grpo.num_generations=2",
            "spear.unlikelihood_margin=0.0",
        ],
    )
    torch.manual_seed(0)
    policy = Policy.from_config(cfg)
    gen = torch.Generator().manual_seed(1)
    adapter = {
        k: v + 0.02 * torch.randn(v.shape, generator=gen) if "lora_B" in k else v
        for k, v in policy.get_adapter().items()
    }
    policy.set_adapter(adapter)
    task = ScriptedTask(seed=0, num_train_examples=64, num_eval_examples=4)
    examples = task.load().train[: rows // 2]
    rng = random.Random(2)
    shared = _ids(rng, PROMPT_TOKENS // 2)  # a common prompt head, as real prompts have

    if algorithm == "spear":
        half = rows // 2
        traces = [
            Trace(ex, shared + _ids(rng, PROMPT_TOKENS // 2), _ids(rng, COMPLETION_TOKENS), "", c)
            for ex, c in zip(examples * 2, [1.0] * half + [0.5] * half)
        ]
        wins, losses = traces[:half], traces[half:]
        flags = [[True] * COMPLETION_TOKENS for _ in losses]
        weights = SpearUpdate(cfg, policy, task, OracleFeedback(task)).weights()
        step = SpearMicroStep(
            policy, weights, cfg.optim, wins, losses, flags, adapter, random.Random(3)
        )
        policy.model.train()
        before = _peak_mb()
        loss = step(1.0)
    else:
        scripted = {}

        def generator(prompts, max_new_tokens):
            outs = []
            for i, p in enumerate(prompts):
                ids = scripted.setdefault(i, _ids(rng, COMPLETION_TOKENS))
                outs.append(Completion(tuple(p), ids, "right" if i % 2 else "wrong", False))
            return outs

        algo = GRPOUpdate(cfg, policy, task, OracleFeedback(task))
        algo.fitting_prompts = lambda state, chosen: (
            list(chosen),
            [list(shared + _ids(random.Random(ex.uid), PROMPT_TOKENS // 2)) for ex in chosen],
        )
        state = RoundState(examples, adapter, generator, random.Random(3), accum=1)
        before = _peak_mb()
        loss = algo.micro_step(state, 1.0)
    peak = _peak_mb()
    grads = {n: p.grad.detach().clone() for n, p in policy.trainable().items()}
    torch.save(grads, grads_out)
    return {
        "algorithm": algorithm,
        "path": path,
        "rows": rows,
        "loss": loss,
        "before_mb": round(before),
        "peak_mb": round(peak),
        "step_mb": round(peak - before),
    }


# ---------------------------------------------------------------------------- driver
def _case_in_subprocess(model_dir: str, algorithm: str, rows: int, path: str, out: Path) -> dict:
    grads = out / f"{algorithm}-{path}-{rows}.pt"
    cmd = [sys.executable, __file__, "--case", model_dir, algorithm, str(rows), path, str(grads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{algorithm} {path} {rows} rows failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["grads"] = str(grads)
    return result


def _compare(a: dict, b: dict) -> dict:
    ga, gb = torch.load(a["grads"]), torch.load(b["grads"])
    scale = max(float(g.abs().max()) for g in ga.values())
    diff = max(float((ga[k] - gb[k]).abs().max()) for k in ga)
    return {"loss_diff": abs(a["loss"] - b["loss"]), "grad_max": scale, "grad_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-rows", type=int, nargs="*", default=[2, 4, 8])
    parser.add_argument("--new-rows", type=int, nargs="*", default=[2, 4, 8, 32])
    parser.add_argument("--algorithms", nargs="*", default=["spear", "grpo"])
    parser.add_argument("--case", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        model_dir, algorithm, rows, path, grads_out = args.case
        print(json.dumps(run_case(model_dir, algorithm, int(rows), path, grads_out)), flush=True)
        return

    from spearfl.models.paper_tokenizers import save_tiny_paper_model

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        model_dir = str(save_tiny_paper_model("qwen2", out / "tiny-qwen2"))
        results: list[dict] = []
        for algorithm in args.algorithms:
            for path, counts in (("old", args.old_rows), ("new", args.new_rows)):
                for rows in counts:
                    results.append(_case_in_subprocess(model_dir, algorithm, rows, path, out))
                    shown = {k: v for k, v in results[-1].items() if k != "grads"}
                    print(json.dumps(shown), flush=True)
        print(
            "\n| algorithm | rows | old step MB | new step MB | old / new | loss diff | grad diff"
            " / max |"
        )
        print("|---|---|---|---|---|---|---|")
        by_key = {(r["algorithm"], r["path"], r["rows"]): r for r in results}
        for algorithm in args.algorithms:
            for rows in sorted(set(args.old_rows) | set(args.new_rows)):
                old, new = (
                    by_key.get((algorithm, "old", rows)),
                    by_key.get((algorithm, "new", rows)),
                )
                if old and new:
                    c = _compare(old, new)
                    print(
                        f"| {algorithm} | {rows} | {old['step_mb']:,} | {new['step_mb']:,} | "
                        f"{old['step_mb'] / max(1, new['step_mb']):.1f}x | {c['loss_diff']:.1e} | "
                        f"{c['grad_diff']:.1e} / {c['grad_max']:.1e} |"
                    )
                elif new:
                    print(f"| {algorithm} | {rows} | – | {new['step_mb']:,} | | | |")
                elif old:
                    print(f"| {algorithm} | {rows} | {old['step_mb']:,} | – | | | |")


if __name__ == "__main__":
    main()
