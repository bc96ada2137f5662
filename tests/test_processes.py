"""tests/processes.py: a command that hangs, with a child of its own (as DDP's rank 1 is rank 0's), times out with
both processes' stacks in the error, and neither process outlives it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.processes import run_group

HANG = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time, sys; print(flush=True); time.sleep(600)"])
print(child.pid, flush=True)
def stuck_in_the_parent():
    time.sleep(600)
stuck_in_the_parent()
"""


def alive(pid: int) -> bool:
    """Running or sleeping: a zombie (killed, not yet reaped by whatever adopted it) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_hanging_command_and_its_child_print_their_stacks_and_are_gone():
    with pytest.raises(AssertionError) as failure:
        run_group([sys.executable, "-c", HANG], timeout=2)
    message = str(failure.value)
    assert "timed out after 2 s" in message
    assert "in stuck_in_the_parent" in message  # the parent's stack, from faulthandler
    assert message.lower().count("most recent call first") >= 2  # and the child's
    child = int(message.split("STDOUT (end):\n", 1)[1].split()[0])
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_a_command_that_ends_gives_its_output_and_return_code():
    done = run_group(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"], timeout=30
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
