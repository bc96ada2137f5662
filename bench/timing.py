"""Shared by the benchmarks: paired, interleaved timing, spreads, verdicts and the machine facts.

The rules every script follows:

- every ratio and every verdict uses a baseline measured in the same run;
- repeated measurements are interleaved: one round runs every case once (A B C, then C B A in the
  next round when `alternate`, so a slow drift of the machine weighs on every case alike), and the
  i-th measurement of each case forms a pair with the i-th of the baseline;
- a figure is the median over the pairs, shown with its spread (min - max of the per-pair values);
- a verdict is given only when every pair agrees: the per-pair ratios all below 1 (or all above),
  or all on the same side of a target. Otherwise it says "no clear difference" (or "within the
  spread"). With n pairs, all n agree by chance with probability 2 / 2^n (6% for 5 pairs, 25% for 3);
  fewer than 3 pairs give no verdict.

This file is a helper; it measures nothing when run.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date

NO_CLEAR_DIFFERENCE = "no clear difference"

MIN_PAIRS = 3
"""Fewer pairs give no verdict: all of 2 pairs agree by chance half the time."""

TOO_FEW = f"no verdict from fewer than {MIN_PAIRS} pairs"

DISTURBED = 0.85
"""A round whose CPU seconds per wall second fall below this share of the torch threads shared the cores."""


# --- measuring ------------------------------------------------------------------------------------
@dataclass
class RoundRobin:
    """Cases run in rounds, each case once per round; the first `warmup` rounds are untimed.

    `alternate`: odd rounds run the cases in reverse order (A B, B A, A B, ...). `before_each(name)`, if
    given, runs untimed before each call (e.g. to set that case's thread count). `self_timed`: each case
    returns its own figure (seconds of its timed part, a rate, ...), recorded instead of the call's wall
    time. `run_round()` runs one round, so that another loop (a `lightning.Trainer`'s, say) can drive the
    rounds; `interleave` runs them all.
    """

    cases: dict[str, Callable[[], object]]
    warmup: int = 1
    alternate: bool = True
    before_each: Callable[[str], None] | None = None
    progress: Callable[[str], None] | None = None
    self_timed: bool = False
    rounds_done: int = 0
    warmup_seconds: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    """Timed rounds only: seconds[name][i] is round i's (i = 0 after the warm-up); pairs share an index."""
    cpu_shares: list[float] = field(default_factory=list)
    """Timed rounds only: this process's CPU seconds (all its threads) per wall second of the round's calls."""

    def __post_init__(self) -> None:
        self.warmup_seconds = {name: [] for name in self.cases}
        self.seconds = {name: [] for name in self.cases}

    def run_round(self) -> None:
        names = list(self.cases)
        order = names[::-1] if self.alternate and self.rounds_done % 2 else names
        is_warmup = self.rounds_done < self.warmup
        record = self.warmup_seconds if is_warmup else self.seconds
        wall = cpu = 0.0
        for name in order:
            if self.before_each is not None:
                self.before_each(name)
            start, cpu_start = time.perf_counter(), time.process_time()
            figure = self.cases[name]()
            elapsed = time.perf_counter() - start
            wall, cpu = wall + elapsed, cpu + time.process_time() - cpu_start
            record[name].append(float(figure) if self.self_timed else elapsed)  # type: ignore[arg-type]
        if not is_warmup:
            self.cpu_shares.append(cpu / wall if wall > 0 else float("nan"))
        self.rounds_done += 1
        if self.progress is not None:
            label = f"warm-up round {self.rounds_done}" if is_warmup else f"round {self.rounds_done - self.warmup}"
            unit = "" if self.self_timed else " s"
            self.progress(f"{label}: " + ", ".join(f"{name} {record[name][-1]:.2f}{unit}" for name in names))


def interleave(
    cases: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    alternate: bool = True,
    before_each: Callable[[str], None] | None = None,
    progress: Callable[[str], None] | None = None,
    self_timed: bool = False,
) -> RoundRobin:
    """Run every case once per round, `warmup` untimed rounds then `rounds` timed ones (see RoundRobin)."""
    robin = RoundRobin(cases, warmup, alternate, before_each, progress, self_timed)
    for _ in range(warmup + rounds):
        robin.run_round()
    return robin


# --- summarising ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spread:
    """Median, min, max and quartiles of some values (per-step seconds, per-pair ratios, ...)."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        values = tuple(values)
        if not values:
            raise ValueError("a spread of no values")
        return cls(values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def quartiles(self) -> tuple[float, float]:
        """First and third quartiles (inclusive method; the min and max for fewer than 2 values)."""
        if len(self.values) < 2:
            return self.low, self.high
        q1, _, q3 = statistics.quantiles(self.values, n=4, method="inclusive")
        return q1, q3

    def text(self, fmt: str = ".2f", unit: str = "") -> str:
        """'median (min - max)', e.g. '1.93x (1.85 - 2.01x)'. A fixed-point format gains digits (up to 4) while
        the min or the max would print as exactly 1 without being 1, so that a ratio's spread shows on which
        side of 1 it lies."""
        if fmt.startswith(".") and fmt.endswith("f"):
            digits = int(fmt[1:-1])
            while digits < 4 and any(f"{v:.{digits}f}" == f"{1:.{digits}f}" and v != 1 for v in (self.low, self.high)):
                digits += 1
            fmt = f".{digits}f"
        return f"{self.median:{fmt}}{unit} ({self.low:{fmt}} - {self.high:{fmt}}{unit})"


def _pairs(first: Sequence[float], second: Sequence[float]) -> zip:
    """The i-th values of two cases side by side (pairs: the same round)."""
    if len(first) != len(second):
        raise ValueError(f"unpaired: {len(first)} against {len(second)} values")
    return zip(first, second)


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Spread:
    """Per-pair ratios numerator_i / denominator_i (pairs: the same round)."""
    return Spread.of(n / d for n, d in _pairs(numerators, denominators))


def differences(minuends: Sequence[float], subtrahends: Sequence[float]) -> Spread:
    """Per-pair differences a_i - b_i."""
    return Spread.of(a - b for a, b in _pairs(minuends, subtrahends))


def compare(time_ratios: Spread, faster: str = "faster", slower: str = "slower") -> str:
    """Verdict on per-pair time ratios (case / baseline): `faster` if every pair is below 1, `slower` if every
    pair is above 1, else 'no clear difference' (and no verdict at all from fewer than MIN_PAIRS pairs)."""
    if len(time_ratios.values) < MIN_PAIRS:
        return TOO_FEW
    if time_ratios.high < 1:
        return faster
    if time_ratios.low > 1:
        return slower
    return NO_CLEAR_DIFFERENCE


def against_target(values: Spread, target: float, at_least: bool) -> str:
    """'met' if every pair meets the target (>= target when `at_least`, else <= target), 'not met' if none
    does, else 'within the spread: no clear verdict' (and no verdict at all from fewer than MIN_PAIRS pairs)."""
    if len(values.values) < MIN_PAIRS:
        return TOO_FEW
    meets = [value >= target if at_least else value <= target for value in values.values]
    if all(meets):
        return "met"
    if not any(meets):
        return "not met"
    return "within the spread: no clear verdict"


def cpu_share_line(robin: RoundRobin, threads: int) -> str:
    """The process's CPU seconds per wall second, round by round: about `threads` when it had its cores, less
    in a round that other jobs shared (its times and ratios are the suspect ones)."""
    shares = ", ".join(f"{share:.2f}" for share in robin.cpu_shares)
    low = [str(index + 1) for index, share in enumerate(robin.cpu_shares) if share < DISTURBED * threads]
    warning = (
        (
            f"; round(s) {', '.join(low)} below {DISTURBED:.0%} of that were disturbed: read their pairs with care, "
            "or rerun"
        )
        if low
        else ""
    )
    return (
        f"- CPU seconds per wall second of this process, round by round: {shares} ({threads} torch threads: "
        f"about {threads} = the cores to itself, less = other jobs took them{warning})"
    )


def to_stderr(line: str) -> None:
    """Progress lines go to stderr, so that stdout holds only the report."""
    print(line, file=sys.stderr, flush=True)


def seconds_list(values: Sequence[float], fmt: str = ".2f") -> str:
    return ", ".join(f"{value:{fmt}}" for value in values) or "-"


# --- the machine ----------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_line() -> str:
    """The date, the CPU, the cores this process may use and the load average (other jobs on the machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"- machine: {date.today():%d %b %Y}, {cpu_model()}, {cores} usable cores ({os.cpu_count()} online), "
        f"no GPU used; load average at the start {load_average()} (1/5/15 min)"
    )


def machine_facts(extra: str = "") -> list[str]:
    """The machine line and the software line (torch's threads and CPU capability; `extra`: more packages)."""
    import torch

    software = (
        f"- software: Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads, CPU capability {torch.backends.cpu.get_cpu_capability()})"
    )
    return [machine_line(), software + (f", {extra}" if extra else "")]


def load_after_line() -> str:
    """The load average at the end: compare with the start's to see whether other jobs shared the cores."""
    return f"- load average at the end: {load_average()} (1/5/15 min); above the run's own threads = contended"
