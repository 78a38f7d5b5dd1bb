"""What a run of a config does differently from the paper's own code (SPEC §8), and why.

``spearfl check`` prints these for the config it is given, so whoever brings one of the paper's
files knows which numbers can differ and where to look. Each entry is a difference we keep on
purpose; docs/design.md lists them all with their likely effect.
"""

from __future__ import annotations

from dataclasses import dataclass

from spearfl.config import Config
from spearfl.tasks.registry import paper_name


@dataclass(frozen=True)
class Difference:
    key: str
    ours: str
    paper: str
    why: str

    def line(self) -> str:
        return f"{self.key}: here {self.ours}; the paper's code: {self.paper}. {self.why}"


def differences(cfg: Config, prompt_format: str, has_cuda: bool) -> list[Difference]:
    """The differences that apply to ``cfg``; ``prompt_format`` is "chat template" or "plain"
    (as :mod:`spearfl.preflight` resolved it), ``has_cuda`` whether a GPU is visible."""
    m, task, algo = cfg.model, paper_name(cfg.data.dataset), cfg.algorithm.name
    found: list[Difference] = []

    def add(key: str, ours: str, paper: str, why: str) -> None:
        found.append(Difference(key, ours, paper, why))

    if not m.trust_remote_code:
        add(
            "model.trust_remote_code",
            "false",
            "true",
            "No code from a model repository runs here (a security choice); the paper's models "
            "need none.",
        )
    if m.dtype == "auto" and not has_cuda:
        add("model.dtype", "auto = fp32 on this CPU", "bf16", "bf16 is about 2x slower on CPUs.")
    if m.device_map is None:
        add(
            "model.device_map",
            "none (the whole model on one device)",
            "auto",
            "Identical with one GPU per client; accelerate would spread a model over GPUs.",
        )
    if prompt_format == "chat template":
        add(
            "model.chat_template",
            "the tokenizer's chat template",
            "plain prompts (it ran base models)",
            "Right for an instruct model; set model.chat_template: off for a base model.",
        )
    if task in ("arc_challenge", "hellaswag", "math_mcqa"):
        add(
            "answer extraction",
            "the last declared letter",
            "the first letter found in the upper-cased text",
            "Options a completion lists while reasoning do not count as its answer here.",
        )
        if cfg.feedback.mc_hint_style == "partial":
            add(
                "feedback.mc_hint_style",
                "partial (the hint stays shorter than the option)",
                "paper (the first mc_hint_words words, even the whole option)",
                "Set feedback.mc_hint_style: paper to reproduce the paper's hint.",
            )
    if task == "math_mcqa":
        add(
            "MATH-MCQA answer index 0",
            "option A",
            "read as missing",
            "Questions whose answer is A count here (never correct there), so MATH-MCQA "
            "accuracies are not comparable with the paper's.",
        )
    if algo == "grpo":
        add(
            "GRPO advantages and clip",
            "population std; the PPO clip",
            "sample std (n-1); max of clipped and unclipped terms for negative advantages",
            "With one update per sampled batch the ratio stays near 1: small effect.",
        )
        if task == "strategy_qa":
            add(
                "GRPO prompts on StrategyQA",
                "the question only",
                "the question plus the gold facts (training and evaluation)",
                "The reference gives its GRPO privileged context; expect lower GRPO accuracy here.",
            )
    if algo in ("spear", "feedback_sft"):
        add(
            "SFT targets",
            "the sampled token ids plus EOS",
            "the stripped completion text, re-tokenised",
            "Both train on the same text; token boundaries can differ.",
        )
    if algo == "spear":
        add(
            "unlikelihood mask",
            "only the answer marker's own tokens are protected",
            "those token ids are protected wherever they occur",
            "Slightly more tokens of a wrong answer are pushed down here.",
        )
        if cfg.spear.lambda_anchor > 0:
            add(
                "spear.lambda_anchor",
                "a gradient towards the global adapter",
                "no gradient (detached tensors)",
                "The anchor term does nothing in the reference.",
            )
    add(
        "Dirichlet split",
        "redraw up to 100 times, then lower the minimum by one; a seeded subset per client",
        "lower the minimum x0.7 after each failed draw; the first max_examples_per_client",
        "Clients hold other examples for the same seed; the label mix is drawn the same way.",
    )
    add(
        "evaluation rounds",
        "round 0 (the untrained adapter), then every data.eval_every rounds and the last",
        "from round 1",
        "The first accuracy here is the base model's own.",
    )
    return found
