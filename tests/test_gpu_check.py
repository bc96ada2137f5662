"""bench/gpu_check.py, the GPU smoke check, end to end on the CPU with tiny sizes (`--cpu --tiny`): every section
runs and reports finite figures, in the JSON and in the markdown table. Section 1 trains two recipes of different
methods here (`--recipes`), not all of them: that every recipe builds and trains is what tests/test_recipes.py and
the per-method CLI tests check; here it is the check's own code path."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

FIGURES = {
    "1": ("steps_per_s", "s_per_step", "peak_memory_gib", "syncs_per_step", "loss_last"),
    "3": ("loop_s_per_image", "command_s_per_image", "wall_s"),
    "4": ("s_median", "peak_memory_gib"),
}
"""Per-row figures of the sections with rows: each must be a finite number in every row."""


def numbers(value):
    """Every number in a JSON value, recursively (booleans are not numbers here)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_cpu_tiny_run_reports_every_section_with_finite_figures(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench/gpu_check.py"),
            "--cpu",
            "--tiny",
            "--recipes",
            "sr3_x4,deqir_faces64",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert sorted(sections) == ["1", "2", "3", "4", "5"]
    for number, section in sections.items():
        assert section["status"] == "ok", (number, section.get("error"), section.get("rows"))
        assert section["device"].startswith("CPU: ")
    assert all(math.isfinite(value) for value in numbers(report))
    for number, names in FIGURES.items():
        rows = [row for row in sections[number]["rows"] if row["status"] == "ok"]
        assert rows and all(finite(row[name]) for row in rows for name in names), number
    trained = {row["recipe"] for row in sections["1"]["rows"]}
    assert trained == {"sr3_x4", "deqir_faces64"}
    assert all(row["loss_finite"] and row["syncs_per_step"] == 0 for row in sections["1"]["rows"])  # no CUDA syncs
    ddp = sections["2"]
    assert ddp["rc"] == 0 and ddp["checkpoint_written"] and ddp["backend"] == "gloo"
    assert [row["name"] for row in sections["3"]["rows"]] == ["restore", "evaluate"]
    assert all(row["rc"] == 0 for row in sections["3"]["rows"])
    deq = sections["4"]["rows"]
    assert {row["T"] for row in deq} == {5, 10} and all(row["rounds"] == 3 for row in deq)
    assert all(finite(row["ratio_to_sequential"]) for row in deq if row["case"] != "sequential")
    assert finite(sections["5"]["bf16_over_fp32"]) and sections["5"]["rounds"] == 3
    table = (out / "gpu_check.md").read_text()
    for number in sections:
        assert f"\n## {number}. " in table
    assert "| sr3_x4 | ok | CPU: " in table and "| `evaluate` | ok | CPU: " in table
