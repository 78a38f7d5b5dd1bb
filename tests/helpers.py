"""Small test doubles shared by the baseline tests."""

from __future__ import annotations

from spearfl.tasks.embedded import EmbeddedCategoryTask


class ParityTask(EmbeddedCategoryTask):
    """Right when the completion's text has an even length: mixed groups, deterministic."""

    def is_correct(self, example, completion):
        return len(completion) % 2 == 0


def spy_generate(policy) -> list[dict]:
    """Wrap ``policy.generate``: record each call's settings and count generated tokens."""
    calls: list[dict] = []
    real = policy.generate

    def spy(prompts, **kwargs):
        outs = real(prompts, **kwargs)
        calls.append({**kwargs, "n": len(prompts), "tokens": sum(o.num_generated for o in outs)})
        return outs

    policy.generate = spy
    return calls
