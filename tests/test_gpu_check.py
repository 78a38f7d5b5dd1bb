"""``benchmarks/gpu_check.py --device cpu``, as CI runs it: every algorithm's update and an
evaluation on both tiny paper models, with Flower made unimportable (GPU machines lack it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spearfl.algorithms.registry import algorithm_names

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
WITHOUT_FLOWER = (
    "import runpy, sys; sys.modules['flwr'] = None; "  # `import flwr` now raises ImportError
    "sys.argv = [sys.argv[1], '--device', 'cpu']; runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.mark.slow
def test_gpu_check_passes_on_cpu_without_flower():
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_FLOWER, str(SCRIPT)],
        capture_output=True,
        text=True,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | what | peak RSS MB |")
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in table[1:]}
    expected = {(f, a) for f in ("qwen2", "llama3") for a in [*algorithm_names(), "evaluation"]}
    assert set(rows) == expected
    assert all(line.rstrip().endswith("| yes |") for line in rows.values())
    # every update generated tokens and took at least one optimiser step
    for (_, what), line in rows.items():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if what != "evaluation":
            assert int(cells[3]) > 0 and int(cells[5]) >= 1, line
