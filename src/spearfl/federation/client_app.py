"""The Flower ClientApp: one device's side of a round (Message API).

A ``query`` message asks which client (data partition) this node is, so the server can sample
clients by id reproducibly; a ``train`` message carries the global adapter, the round number and
the run's configuration, and the reply carries the new adapter, ``n_eff`` and the metrics.

With ``worker="TICKET"`` in the node config the train message goes to the device's
long-lived ``spearfl worker`` (``device_link``), which keeps the model loaded across the fresh
ClientApp processes Flower's deployment engine starts for each message.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from spearfl.config import config_from_json
from spearfl.federation.device_link import WORKER_KEY, delegate_train
from spearfl.hub import apply_hf_settings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

app = ClientApp()

ADAPTER = "adapter"
CONFIG = "config"
METRICS = "metrics"


def client_id_of(context: Context) -> int:
    """The client this node is: ``partition-id`` from the node config (``data-path``, when
    given, is the device's own data file; otherwise it trains on that share of the dataset;
    ``device-dir`` is the device's folder, with its feedback inbox)."""
    try:
        return int(context.node_config["partition-id"])
    except KeyError:
        raise ValueError(
            "this SuperNode has no 'partition-id' in its node config "
            '(start it with --node-config "partition-id=N num-partitions=M")'
        ) from None


def tensor_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors' data: what an adapter costs on the wire, one way."""
    return sum(t.numel() * t.element_size() for t in state.values())


@app.query()
def identify(msg: Message, context: Context) -> Message:
    reply = ConfigRecord({"client_id": client_id_of(context)})
    return Message(RecordDict({CONFIG: reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round's update, here or, with ``worker`` in the node config (a ticket), in the
    device's long-lived worker; only this path imports torch and the model code (a
    deployment ClientApp process that delegates stays light)."""
    ticket = context.node_config.get(WORKER_KEY)
    if ticket:
        return delegate_train(msg, context.node_config, Path(str(ticket)))
    started = time.perf_counter()
    import torch  # noqa: F401 - flwr converts ArrayRecords only when torch is imported

    from spearfl.federation.checkpoint import Checkpoint, save_checkpoint
    from spearfl.federation.memory import peak_gpu_mb, peak_rss_mb, reset_gpu_peak, rss_mb
    from spearfl.federation.worker import ClientWorker

    settings = msg.content[CONFIG]
    cfg = config_from_json(str(settings["json"]))
    apply_hf_settings(cfg.hf)  # a deployment ClientApp process imported the Hub libraries already
    round_num = int(settings["round"])
    client_id = client_id_of(context)
    data_path = context.node_config.get("data-path")
    worker = ClientWorker.for_client(cfg, client_id, str(data_path) if data_path else None)
    adapter = dict(msg.content[ADAPTER].to_torch_state_dict())
    device_dir = str(context.node_config.get("device-dir") or cfg.device_dir(client_id))
    if cfg.feedback.provider == "human":
        # The device's page answers with the newest global adapter this device has seen.
        save_checkpoint(device_dir, Checkpoint(round_num - 1, adapter))
    device = worker.policy.device
    reset_gpu_peak(device)  # this round's high-water mark, not the process's
    ready = time.perf_counter() - started  # imports, model and data loading: none when cached
    result = worker.train(adapter, round_num, client_id, device_dir)
    metrics = result.metrics.to_record()  # the algorithm's own; then what this app measures
    metrics["n_eff"] = float(result.n_eff)
    metrics["client_seconds"] = time.perf_counter() - started
    metrics["client_ready_seconds"] = ready
    metrics["client_pid"] = float(os.getpid())
    metrics["client_id"] = float(client_id)
    state = {k: v.detach().to("cpu").contiguous() for k, v in result.adapter.items()}
    metrics["adapter_bytes"] = float(tensor_bytes(state))
    metrics["peak_rss_mb"] = peak_rss_mb()
    current_mb = rss_mb()
    if current_mb is not None:
        metrics["rss_mb"] = current_mb
    gpu_mb = peak_gpu_mb(device)
    if gpu_mb is not None:
        metrics["peak_gpu_mb"] = gpu_mb
    content = RecordDict({ADAPTER: ArrayRecord(state), METRICS: MetricRecord(metrics)})
    return Message(content, reply_to=msg)
