"""The device's feedback page API with the tiny model: the SPEAR loop with a person, bad input
answered with clear errors and nothing stored wrongly, and a page killed mid-write."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from flower_cluster import free_port
from helpers import device_overrides, spawn_spearfl, wait_for_page
from spearfl.config import load_config
from spearfl.feedback.store import FeedbackStore

pytestmark = pytest.mark.slow


@pytest.fixture
def page(tiny_model_dir, tmp_path):
    from spearfl.feedback_page.model import DeviceModel
    from spearfl.feedback_page.page import create_app

    cfg = load_config(None, device_overrides(tiny_model_dir, tmp_path / "run"))
    device_dir = cfg.device_dir(0)
    store = FeedbackStore.for_device(device_dir)
    app = create_app(DeviceModel(cfg, 0, [device_dir]), store)
    with TestClient(app) as client:
        yield client, store


def _rid() -> str:
    return uuid.uuid4().hex


def test_the_spear_loop_with_a_person(page):
    client, store = page
    queue = client.get("/api/queue").json()
    assert queue and all(q["text"].startswith("Which of these is a") for q in queue)
    asked = client.post("/api/ask", json={"request_id": _rid(), "example_uid": queue[0]["uid"]})
    assert asked.status_code == 200, asked.text
    item = asked.json()
    assert item["adapter_round"] == 0 and item["verdict"] is None
    judged = client.post(
        f"/api/interactions/{item['id']}/verdict", json={"verdict": "wrong", "hint": "it flies"}
    ).json()
    assert judged["verdict"] == "wrong" and judged["hint"] == "it flies"
    assert judged["revision"] is not None and judged["revision_round"] == 0
    final = client.post(
        f"/api/interactions/{item['id']}/revision-verdict", json={"verdict": "right"}
    ).json()
    assert final["revision_verdict"] == "right"
    free = client.post("/api/ask", json={"request_id": _rid(), "question": "Is ice cold?"})
    assert free.json()["prompt"] == "Is ice cold?"
    status = client.get("/api/status").json()
    assert (status["interactions"], status["waiting_for_training"], status["round"]) == (2, 1, 0)
    page_html = client.get("/").text
    assert "textContent" in page_html and "innerHTML" not in page_html
    assert "<script src" not in page_html and "https://" not in page_html  # nothing external


def test_bad_input_gets_a_clear_error_and_stores_nothing_wrong(page):
    client, store = page
    item = client.post("/api/ask", json={"request_id": _rid(), "question": "2 + 2?"}).json()
    path = f"/api/interactions/{item['id']}/verdict"

    empty = client.post(path, json={"verdict": "wrong", "hint": "   "})
    assert empty.status_code == 422 and "needs a hint" in empty.json()["detail"]
    huge = client.post(path, json={"verdict": "wrong", "hint": "x" * 1_000_000})
    assert huge.status_code == 413 and "larger than 64 KB" in huge.json()["detail"]
    long = client.post(path, json={"verdict": "wrong", "hint": "x" * 1001})
    assert long.status_code == 422 and "hint" in long.json()["detail"]
    assert "1000" in long.json()["detail"]
    odd = client.post(path, json={"verdict": "maybe"})
    assert odd.status_code == 422 and "verdict" in odd.json()["detail"]
    unknown = client.post("/api/interactions/12345/verdict", json={"verdict": "right"})
    assert unknown.status_code == 404 and unknown.json()["detail"] == "no interaction 12345"
    no_rev = client.post(
        f"/api/interactions/{item['id']}/revision-verdict", json={"verdict": "right"}
    )
    assert no_rev.status_code == 422 and "no revision" in no_rev.json()["detail"]
    bad_id = client.post("/api/ask", json={"request_id": "x", "question": "hi"})
    assert bad_id.status_code == 422 and "request_id" in bad_id.json()["detail"]
    nothing = client.post("/api/ask", json={"request_id": _rid(), "question": "  "})
    assert nothing.status_code == 422 and "type a question" in nothing.json()["detail"]
    stranger = client.post("/api/ask", json={"request_id": _rid(), "example_uid": "nope"})
    assert stranger.status_code == 422 and "no question 'nope'" in stranger.json()["detail"]
    assert store.count() == 1 and store.get(item["id"]).verdict is None

    script = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    ok = client.post(path, json={"verdict": "wrong", "hint": script})
    assert ok.status_code == 200 and ok.json()["hint"] == script  # kept as text, verbatim
    assert store.get(item["id"]).hint == script


def _spawn_page(cfg_file: Path, port: int, log: Path, device_dir: Path):
    return spawn_spearfl(
        log, "serve", str(cfg_file), "--client-id", "0", "--page-only", "--port", str(port),
        "--device-dir", str(device_dir),
    )  # fmt: skip


def test_killing_the_page_mid_write_loses_nothing_acknowledged(tiny_model_dir, tmp_path):
    from spearfl.config import save_config

    cfg = load_config(None, device_overrides(tiny_model_dir, tmp_path / "run"))
    cfg_file = tmp_path / "device.yaml"
    save_config(cfg, cfg_file)
    port, log = free_port(), tmp_path / "page.log"
    url = f"http://127.0.0.1:{port}/"
    proc = _spawn_page(cfg_file, port, log, cfg.device_dir(0))
    wait_for_page(url, proc, log)

    requests = [f"request-{i:04d}" for i in range(60)]
    acked: dict[str, dict] = {}
    judged: set[int] = set()
    lock = threading.Lock()

    def person(rids: list[str]) -> None:
        """Asks and judges without pause; stops at the first request the dead page drops."""
        for rid in rids:
            try:
                r = httpx.post(url + "api/ask", json={"request_id": rid, "question": rid + "?"},
                               timeout=30)  # fmt: skip
                assert r.status_code == 200, r.text
                with lock:
                    acked[rid] = r.json()
                v = httpx.post(url + f"api/interactions/{r.json()['id']}/verdict",
                               json={"verdict": "right"}, timeout=30)  # fmt: skip
                if v.status_code == 200:
                    with lock:
                        judged.add(r.json()["id"])
            except httpx.HTTPError:
                return

    people = [threading.Thread(target=person, args=(requests[k::3],)) for k in range(3)]
    try:
        for t in people:
            t.start()
        deadline = time.monotonic() + 600
        while len(acked) < 12:  # people who gave up (a timed-out answer) end the wait too
            if time.monotonic() > deadline or not any(t.is_alive() for t in people):
                pytest.fail(f"only {len(acked)} answers acknowledged before the kill")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # while three people are still writing
        for t in people:
            t.join(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert 0 < len(acked) < len(requests)

    proc = _spawn_page(
        cfg_file, port, log, cfg.device_dir(0)
    )  # restart, then the client retries everything
    try:
        wait_for_page(url, proc, log)
        for rid in requests:
            r = httpx.post(url + "api/ask", json={"request_id": rid, "question": rid + "?"},
                           timeout=30)  # fmt: skip
            assert r.status_code == 200, r.text
            if rid in acked:  # an acknowledged interaction comes back exactly as it was
                assert r.json() == {**acked[rid], "verdict": r.json()["verdict"]}
    finally:
        proc.kill()
        proc.wait(timeout=30)

    store = FeedbackStore.for_device(cfg.device_dir(0))
    rows = store.recent(1000)
    assert len(rows) == len(requests) == len({r.request_id for r in rows})  # none duplicated
    by_request = {r.request_id: r for r in rows}
    for rid, item in acked.items():
        assert by_request[rid].id == item["id"] and by_request[rid].answer == item["answer"]
    for interaction_id in judged:
        assert store.get(interaction_id).verdict == "right"
