"""ThreadPolicy: how many threads llama.cpp computes each decode step with, chosen by measuring.

Why not a fixed count. llama.cpp splits every operation of a step over its
threads and makes them meet at a spinning barrier after each one, hundreds of
times a step. With a thread per core, a step is fastest on a quiet machine
(SmolLM2 Q4_1 on 2 cores: 2 threads decode 1.5x the tokens of 1), but as soon
as anything else wants a core — the HTTP front end streaming 32 answers, a job,
another model — the OS parks one thread and the others spin at the next barrier
until it runs again: the same steps then took 5-10x longer (measured 23-29
tok/s with 2 threads vs 84-88 with 1, beside one busy process). Leaving a core
free never collapses but gives the quiet case away. Which count wins depends on
what else runs, and that changes while the server runs; so the loop measures.

The policy, with two candidates ``low`` (all cores but one: the safe count) and
``high`` (every core):

* It starts on ``low``. Steps are compared only with steps of the same *key*
  (the loop passes the number of tokens of a step that only decodes, ``None``
  for steps that read prompts): a step's time depends on its batch, and a
  steady stream of answers gives long runs of equal keys.
* **Probe**: once ``interval`` steps ran on the current count and the last
  ``window`` of them share a key, the next ``window`` steps of that key run on
  the other count. If their median is below ``1 - margin`` times the current
  median, the other count becomes current; either way the probe ends. A probe
  whose key changes (a request arrived or ended) is abandoned.
* **Only onto a free core**: a probe of ``high`` starts only when the machine
  left at least ``spare_needed`` of a core idle since the last look (Linux's
  ``/proc/stat``, ``IdleMeter``). One step with a thread the OS parks is not a
  little slower but unboundedly so — every barrier waits out a time slice; a
  single such step took seconds on a loaded machine — so a probe must not
  find that out by trying. A probe step slower than ``collapse`` times the
  current median ends the probe at once, lost.
* **Back-off**: a probe that loses doubles ``interval`` (up to
  ``max_interval``), so a machine where one count is clearly better pays for a
  probe rarely, yet finds out within ``max_interval`` steps when the other
  became better; a switch resets it.
* **Collapse guard**: on ``high``, one step of a known key slower than
  ``collapse`` times its reference (its median when ``high`` was last chosen
  or confirmed) means something began competing for the cores: the next step
  runs on ``low`` at once. On ``low``, a window that slow makes the next
  steps probe without waiting out ``interval``.

With one core, or a thread count set by the operator, there is nothing to
choose and the policy always answers that count. It holds no lock: only the
decode loop's thread calls it.
"""

from __future__ import annotations

import os
import statistics
from collections import deque
from collections.abc import Callable


class IdleMeter:
    """Idle cores of the whole machine, on average since the previous call (Linux)."""

    def __init__(self, path: str = "/proc/stat") -> None:
        self.path = path
        self.cores = os.cpu_count() or 1
        self._last = self._read()

    def _read(self) -> tuple[int, int] | None:
        try:
            with open(self.path, "rb") as stat:
                fields = stat.readline().split()[1:]
        except OSError:
            return None
        ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
        return sum(ticks), ticks[3] + ticks[4]

    def __call__(self) -> float:
        now, last = self._read(), self._last
        self._last = now
        if now is None or last is None or now[0] <= last[0]:
            return 0.0  # unknown: say busy, so that the safe count stays
        return self.cores * (now[1] - last[1]) / (now[0] - last[0])


class ThreadPolicy:
    """Picks the thread count of each step from the measured times of earlier steps."""

    def __init__(
        self,
        low: int,
        high: int,
        *,
        spare: Callable[[], float] = lambda: 1.0,
        spare_needed: float = 0.5,
        window: int = 4,
        interval: int = 16,
        max_interval: int = 512,
        margin: float = 0.05,
        collapse: float = 2.0,
    ) -> None:
        self.low = max(1, low)
        self.high = max(self.low, high)
        self.current = self.low
        self.spare = spare
        self.spare_needed = spare_needed
        self.window = window
        self.base_interval = interval
        self.interval = interval
        self.max_interval = max_interval
        self.margin = margin
        self.collapse = collapse
        self.switches = 0
        self._since = 0  # steps on the current count since the last probe or switch
        self._recent: deque[float] = deque(maxlen=window)  # current count, key _recent_key
        self._recent_key: int | None = None
        self._reference: dict[int, float] = {}  # key -> median when current was last measured
        self._probe_key: int | None = None
        self._probe: list[float] = []
        self._baseline = 0.0

    @property
    def fixed(self) -> bool:
        return self.low == self.high

    @property
    def other(self) -> int:
        return self.high if self.current == self.low else self.low

    @property
    def probing(self) -> bool:
        return self._probe_key is not None

    def threads_for(self, key: int | None) -> int:
        """The thread count to run the next step with; ``key`` as in the module docstring."""
        if self._probe_key is None:
            return self.current
        if key == self._probe_key:
            return self.other
        self._end_probe(won=None)  # the batch changed under the probe: no verdict
        return self.current

    def record(self, key: int | None, threads: int, seconds: float) -> None:
        """The measured time of a step that ran with ``threads``."""
        if self.fixed:
            return
        if self._probe_key is not None and threads == self.other and key == self._probe_key:
            self._probe.append(seconds)
            if seconds > self.collapse * self._baseline:
                self._end_probe(won=False)  # one step that slow decides: no need for more
            elif len(self._probe) >= self.window:
                median = statistics.median(self._probe)
                self._end_probe(won=median < (1.0 - self.margin) * self._baseline, median=median)
            return
        if threads != self.current:
            return  # a step decided before a switch: it says nothing about either count
        self._since += 1
        if key is None:
            return
        reference = self._reference.get(key)
        high = self.current == self.high
        if high and reference is not None and seconds > self.collapse * reference:
            self._switch({})  # a parked thread: back to the safe count now
            return
        if key != self._recent_key:
            self._recent.clear()
            self._recent_key = key
        self._recent.append(seconds)
        if len(self._recent) < self.window:
            return
        median = statistics.median(self._recent)
        if reference is None:
            self._reference[key] = median
        elif median > self.collapse * reference:
            self._since = self.interval  # the machine got busier: probe now
        if self._since < self.interval:
            return
        if self.other == self.high and self.spare() < self.spare_needed:
            self._since = 0  # no free core to try: look again after another interval
            return
        self._probe_key = key
        self._baseline = median
        self._probe = []

    def _switch(self, reference: dict[int, float]) -> None:
        self.current = self.other
        self.switches += 1
        self.interval = self.base_interval
        self._reference = reference
        self._recent.clear()
        self._since = 0

    def _end_probe(self, *, won: bool | None, median: float = 0.0) -> None:
        key = self._probe_key
        self._probe_key = None
        self._probe = []
        self._since = 0
        if won is None:
            return
        self._recent.clear()
        if won:
            self._switch({} if key is None else {key: median})
        else:
            self.interval = min(2 * self.interval, self.max_interval)
            if key is not None:
                self._reference[key] = self._baseline
