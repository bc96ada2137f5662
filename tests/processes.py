"""Run a command the way `subprocess.run(..., capture_output=True, text=True, timeout=...)` does, but in a process
group of its own, so that a hang is diagnosed and cleaned up instead of only timed out.

`subprocess.run` kills only the process it started when the timeout expires. Under DDP that is rank 0: the other
ranks (which Lightning starts as rank 0's children) and any loader workers live on, hold the output pipes open and
keep a core busy for the rest of the suite. And the error says nothing about where the command stood.

Here the command runs with `PYTHONFAULTHANDLER=1` in a new session. On a timeout every process of the group gets
SIGABRT, on which each Python process prints the stack of every one of its threads to its stderr (the captured
pipe, which the ranks share); then the whole group is killed and the AssertionError carries the end of that
output. Core dumps are switched off (in the test process, and so in its commands), so the aborts write no
core files."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from collections.abc import Sequence

GRACE_S = 10.0
"""How long the aborted processes get to print their stacks before the group is killed."""


def _no_core_files() -> None:
    """Core dumps off for this process and so for every command it starts (set here, not between fork and exec:
    Python code there can deadlock in a process with threads)."""
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # the whole group is gone already
        pass


def run_group(
    args: Sequence[str], *, timeout: float, cwd=None, env: dict | None = None, input: str | None = None
) -> subprocess.CompletedProcess:
    """`args` with its output captured as text; on a timeout, an AssertionError with every thread's stack."""
    env = dict(os.environ if env is None else env, PYTHONFAULTHANDLER="1")
    _no_core_files()
    proc = subprocess.Popen(
        list(args),
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        _signal_group(proc.pid, signal.SIGKILL)  # anything that ignored the abort
        raise AssertionError(
            f"timed out after {timeout:g} s, every process of its group aborted with its threads' stacks, then "
            f"killed: {' '.join(map(str, args))}\nSTDOUT (end):\n{out[-3000:]}\nSTDERR (end):\n{err[-12000:]}"
        ) from None
    finally:
        if proc.poll() is None:  # an exception other than the timeout (e.g. Ctrl-C): leave nothing behind
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    _signal_group(proc.pid, signal.SIGKILL)  # rank 0 exited: a rank or worker it left behind goes too
    return subprocess.CompletedProcess(list(args), proc.returncode, out, err)
