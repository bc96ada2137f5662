"""The mutation list stays applicable: every break's text occurs exactly once in its file (code that moved
makes `make mutants` report STALE; this catches it in CI, where the mutation run itself does not run), its
tests exist, and the list spans the layers the check is for."""

from __future__ import annotations

from pathlib import Path

from tests.mutants import BREAKS, ROOT, first_failure


def test_every_break_applies_once_and_names_existing_tests():
    assert len({item.name for item in BREAKS}) == len(BREAKS) >= 25
    for item in BREAKS:
        text = (ROOT / item.path).read_text()
        assert text.count(item.old) == 1, f"{item.name}: {item.path} holds the text {text.count(item.old)} times"
        assert item.old != item.new and text.replace(item.old, item.new) != text
        assert item.tests and all((ROOT / test.split("::")[0]).is_file() for test in item.tests), item.name


def test_the_breaks_span_the_math_nets_methods_metrics_degradations_and_data():
    paths = {Path(item.path).as_posix() for item in BREAKS}
    for layer in (
        "ir_lightning/diffusion/",
        "ir_lightning/nets/",
        "ir_lightning/methods/",
        "ir_lightning/metrics/",
        "ir_lightning/metrics/fid.py",
        "ir_lightning/degradations/",
        "ir_lightning/training/",
        "ir_lightning/io/",
        "datamodules/",
    ):
        assert any(path.startswith(layer) for path in paths), layer


def test_the_catching_test_is_read_from_pytests_summary():
    output = "....F\n=== short test summary info ===\nFAILED tests/a.py::test_x[1-2] - AssertionError: no\n1 failed"
    assert first_failure(output) == "tests/a.py::test_x[1-2]"
    assert first_failure("ERROR tests/b.py - ImportError\n") == "tests/b.py"
