"""Small test doubles and settings shared by several test modules."""

from __future__ import annotations

import random
from pathlib import Path

import torch

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


class Crash(Exception):
    """Stands for the server process dying mid-round."""


def local_send(cfg, faults=None, crash_at: int | None = None, log: list | None = None):
    """A server ``send`` that runs each client's real update in-process;
    ``faults[(round, client)]`` alters it ("raise", "nan", "shape", "neg_weight")."""
    import torch

    from spearfl.federation.server import Delivery, Failure, Reply
    from spearfl.federation.worker import ClientWorker

    faults = faults or {}

    def send(round_num: int, clients: list[int], adapter: dict) -> Delivery:
        if log is not None:
            log.append((round_num, list(clients)))
        if round_num == crash_at:
            raise Crash(f"server died in round {round_num}")
        delivery = Delivery()
        for cid in clients:
            fault = faults.get((round_num, cid))
            if fault == "raise":
                delivery.failures.append(Failure(cid, "error: ClientApp raised RuntimeError"))
                continue
            result = ClientWorker.for_client(cfg, cid).train(dict(adapter), round_num, cid)
            state = {k: v.detach().clone() for k, v in result.adapter.items()}
            metrics = {k: float(v) for k, v in result.metrics.items()}
            metrics["n_eff"] = float(result.n_eff)
            if fault == "nan":
                first = next(iter(state))
                state[first] = state[first].clone()
                state[first].view(-1)[0] = float("nan")
            elif fault == "shape":
                first = next(iter(state))
                state[first] = torch.zeros(state[first].shape[0] + 1, *state[first].shape[1:])
            elif fault == "neg_weight":
                metrics["n_eff"] = -3.0
            delivery.replies.append(Reply(cid, state, metrics))
        return delivery

    return send


def save_tiny_llama(folder: Path) -> Path:
    """A tiny randomly initialised Llama (width 32, 2 layers, fixed seed) with the embedded
    model's tokenizer and chat template, saved in ``folder``.

    Its tokenizer has a chat template, so prompts use it as for the real model (the folder's
    name plays no part in that choice).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from spearfl.models.loading import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_run_overrides(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """A 2-round, 3-client SPEAR run of the tiny model on the embedded task, in seconds."""
    return [
        f"model.model_name={model_dir}",
        "data.dataset=embedded",
        "data.num_clients=3",
        "fl.clients_per_round=2",
        "fl.rounds=2",
        "fl.local_rollout_steps=8",
        "fl.local_train_steps=2",
        "gen.max_new_tokens_y0=4",
        "gen.max_new_tokens_y1=4",
        "gen.num_revisions=1",
        "data.num_train_examples=120",
        "data.num_eval_examples=16",
        "data.min_examples_per_client=5",
        "data.eval_every=1",
        "optim.batch_size=4",
        "optim.lr=0.01",
        "optim.lr_min=0.001",
        "lora.last_n_layers=1",
        "lora.r=4",
        f"output_dir={run_dir}",
        *extra,
    ]


def device_overrides(model_dir: Path, out: Path) -> list[str]:
    """Two tiny-model devices on the embedded task, learning from people (provider human)."""
    return [
        f"model.model_name={model_dir}",
        "data.dataset=embedded",
        "data.num_clients=2",
        "fl.clients_per_round=2",
        "data.num_train_examples=60",
        "data.num_eval_examples=8",
        "data.min_examples_per_client=5",
        "gen.max_new_tokens_y0=6",
        "gen.max_new_tokens_y1=6",
        "lora.last_n_layers=1",
        "lora.r=4",
        "feedback.provider=human",
        f"output_dir={out}",
    ]


def spawn_spearfl(log: Path, *args: str, own_group: bool = False):
    """``spearfl ARGS`` in a child process, its output appended to ``log``. With ``own_group``
    it leads a process group of its own, as a shell's foreground job does, so that
    ``os.killpg(proc.pid, SIGINT)`` is what Ctrl-C in a terminal sends."""
    import os
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "spearfl.cli.main", *args],
        stdout=open(log, "a"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=own_group,
    )


def process_family(pid: int) -> dict[int, str]:
    """``{pid: name}`` of a process and everything it started (Ray's workers included)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    names = {}
    for p in family:
        try:
            names[p.pid] = p.name()
        except psutil.NoSuchProcess:
            pass
    return names


def still_running(pids) -> list[int]:
    """The pids among ``pids`` that are still running (zombies count as gone)."""
    import psutil

    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def wait_until(condition, proc, log: Path, timeout: float, what: str) -> None:
    """Poll ``condition()`` until true; fails early (with the log's tail) if ``proc`` died."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"died before {what}:\n" + log.read_text()[-3000:]
        assert time.monotonic() < deadline, (
            f"no {what} in {timeout:.0f} s:\n" + log.read_text()[-3000:]
        )
        time.sleep(0.05)


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder``, by relative path."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def wait_for_page(url: str, proc, log: Path, timeout: float = 180.0) -> None:
    """Until the device page at ``url`` answers (fails early if its process died)."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url + "api/status", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(log.read_text()[-3000:])


def kill_tree(proc, sig: int | None = None) -> None:
    """Send ``sig`` (default SIGKILL) to a child process and everything it started."""
    import signal

    import psutil

    try:
        parent = psutil.Process(proc.pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.send_signal(signal.SIGKILL if sig is None else sig)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)


def random_pairs(seed: int, shared: int = 0) -> list[tuple[list[int], list[int]]]:
    """Four (prompt, completion) rows of random ids from 3..63 that start with the same
    ``shared`` prompt tokens, shaped to exercise padding: the longest completion, the longest
    sequence and a row with one own prompt token are different rows."""
    gen = torch.Generator().manual_seed(seed)

    def rand(n: int) -> list[int]:
        return torch.randint(3, 64, (n,), generator=gen).tolist()

    prefix = rand(shared)
    return [
        (prefix + rand(5), rand(3)),
        (prefix + rand(2), rand(6)),
        (prefix + rand(9), rand(1)),
        (prefix + rand(1), rand(4)),
    ]


def row_with(base: dict, **changes: object) -> dict:
    """A deep copy of a dataset row with some fields replaced (for malformed-row tests)."""
    import json

    row = json.loads(json.dumps(base))
    row.update(changes)
    return row


def write_jsonl(path: Path, rows: list[object]) -> Path:
    """One JSON value per line, as the Hugging Face JSONL layout has them."""
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_finished_run(
    run_dir: Path, uids: list[str], evals: dict[int, dict], tokens: int = 100, rounds: int = 2
) -> Path:
    """A finished run directory with per-question records: ``evals[round]`` for the evaluated
    rounds (each with ``accuracy`` and ``correct``), one client per training round."""
    from spearfl.reporting.history import HistoryWriter, write_summary
    from spearfl.reporting.records import write_eval_questions

    write_eval_questions(run_dir, uids)
    writer = HistoryWriter(run_dir)
    client = {"0": {"tokens_generated": tokens, "num_rollouts": 8, "y0_correct": 2}}
    for r in range(rounds + 1):
        writer.append(
            {
                "round": r,
                "clients": [0] if r else [],
                "client_metrics": client if r else {},
                "eval": evals.get(r),
            }
        )
    accuracies = [evals[r]["accuracy"] for r in sorted(evals)]
    summary = {
        "final_accuracy": accuracies[-1],
        "best_accuracy": max(accuracies),
        "rounds_completed": rounds,
        "wall_seconds": 1.0,
    }
    write_summary(run_dir, summary)
    return run_dir


def eval_record(correct: list[int], option: list[int] | None = None) -> dict:
    """An evaluation as the Evaluator writes it, from its per-question outcomes."""
    ev: dict = {
        "accuracy": round(sum(correct) / len(correct), 4),
        "correct": correct,
        "n": len(correct),
    }
    if option is not None:
        ev.update(option_accuracy=round(sum(option) / len(option), 4), option_correct=option)
    return ev


def math_mcqa_rows(count: int, seed: int) -> list[dict]:
    """Rows in stellaathena/math_mcqa's schema: problem, four choices, answer index 0-3
    (0 included), a solution ending in a boxed result."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        right = a + b
        wrong = [right + d for d in rng.sample([-3, -2, -1, 1, 2, 3], 3)]
        answer = i % 4
        choices = wrong[:answer] + [right] + wrong[answer:]
        rows.append(
            {
                "problem": f"What is ${a} + {b}$?",
                "choices": [f"${c}$" for c in choices],
                "answer": answer,
                "solution": f"Add the two numbers.\nTens and units add up.\n$\\boxed{{{right}}}$",
            }
        )
    return rows


def paper_data_folder(task: str, shared: Path, tmp: Path) -> Path:
    """Rows of a paper task: the shared copy, or MATH-MCQA rows written into ``tmp``."""
    if task != "math_mcqa":
        return shared / task
    folder = tmp / "math_mcqa"
    if not folder.is_dir():
        folder.mkdir()
        write_jsonl(folder / "train.jsonl", math_mcqa_rows(40, seed=1))
        write_jsonl(folder / "test.jsonl", math_mcqa_rows(8, seed=2))
    return folder
