"""End to end in headless Chromium: a scripted person gives feedback on ten answers on the
device's page, starts a federated round, and the round trains on exactly that feedback.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them where it can);
without them the test is skipped, unless ``SPEARFL_REQUIRE_BROWSER=1`` (CI) makes it fail.
"""

from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

from flower_cluster import free_port
from helpers import device_overrides, kill_tree, spawn_spearfl, wait_for_page
from spearfl.config import load_config, save_config
from spearfl.feedback.store import FeedbackStore
from spearfl.reporting.history import read_history

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SCRIPT_HINT = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
# The scripted person: R = answer right; F = wrong, revision right; U = wrong, revision wrong.
PLAN = "RFURFURFUR"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        reason = (
            "headless Chromium and chromedriver are not installed (apt: chromium chromium-driver)"
        )
        if os.environ.get("SPEARFL_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _until(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def _visible(driver, element_id: str) -> bool:
    return "hidden" not in (driver.find_element("id", element_id).get_attribute("class") or "")


def test_a_person_gives_feedback_and_a_round_learns_from_it(browser, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    cfg = load_config(
        None,
        [
            *device_overrides(tiny_model_dir, run_dir),
            "fl.rounds=1",
            "fl.local_train_steps=2",
            "fl.num_cpus_per_client=1",
            "optim.batch_size=2",
            "optim.lr=0.01",
            "data.eval_every=1",
        ],
    )
    cfg_file = tmp_path / "device.yaml"
    save_config(cfg, cfg_file)
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}/"
    proc = spawn_spearfl(
        log, "serve", str(cfg_file), "--client-id", "0", "--port", str(port),
        "--output-dir", str(run_dir),
    )  # fmt: skip
    try:
        wait_for_page(url, proc, log)
        driver = browser
        driver.get(url)
        _until(lambda: driver.find_elements("css selector", "#queue button.pick"), what="queue")
        for i, plan in enumerate(PLAN):
            driver.find_elements("css selector", "#queue button.pick")[i].click()
            _until(lambda: _visible(driver, "judge"), what=f"answer {i}")
            if plan == "R":
                driver.find_element("id", "right").click()
                _until(lambda: not _visible(driver, "judge"), what="verdict stored")
                continue
            driver.find_element("id", "wrong").click()
            hint = SCRIPT_HINT if i == 1 else f"think about what it is used for ({i})"
            driver.find_element("id", "hint").send_keys(hint)
            driver.find_element("id", "send-hint").click()
            _until(lambda: _visible(driver, "revision-area"), what=f"revision {i}")
            driver.find_element("id", "rev-right" if plan == "F" else "rev-wrong").click()
            _until(lambda: not _visible(driver, "revision-area"), what="revision verdict")

        # The hint with markup is shown as text and never ran.
        _until(lambda: SCRIPT_HINT in driver.find_element("id", "history").text, what="history")
        assert driver.execute_script("return window.__pwned === undefined")
        driver.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / "feedback-page.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("SPEARFL_SCREENSHOT"):
            shutil.copy(shot, os.environ["SPEARFL_SCREENSHOT"])

        driver.find_element("id", "start-round").click()
        _until(lambda: driver.find_element("id", "round").text == "1", 600, "round 1 on the page")
        status = httpx.get(url + "api/status", timeout=10).json()
        assert status["round"] == 1 and status["waiting_for_training"] == 0
    finally:
        kill_tree(proc)

    store = FeedbackStore.for_device(cfg.device_dir(0))
    rows = store.recent(100)
    assert len(rows) == 10 and {r.used_in_round for r in rows} == {1}
    assert [r.verdict for r in reversed(rows)] == ["right" if p == "R" else "wrong" for p in PLAN]
    metrics = read_history(run_dir)[1]["client_metrics"]
    mine, other = metrics["0"], metrics["1"]
    rights, fixed, unfixed = PLAN.count("R"), PLAN.count("F"), PLAN.count("U")
    assert mine["wins"] == rights + fixed and mine["losses"] == fixed + unfixed
    assert (mine["losses_fixed"], mine["losses_unfixed"]) == (fixed, unfixed)
    assert mine["n_eff"] == rights + fixed and mine["trained"] == 1
    assert other["n_eff"] == 0.0 and other["num_rollouts"] == 0  # no feedback: no weight
    before = load_file(str(run_dir / "adapters" / "round_0000" / "adapter_model.safetensors"))
    after = load_file(str(run_dir / "adapters" / "final" / "adapter_model.safetensors"))
    assert any(not (before[k] == after[k]).all() for k in before)
