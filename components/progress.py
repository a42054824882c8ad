"""Progress lines a step prints for `tosguard run`'s clean view.

kfp.local streams each task's output line by line into the parent process. When the
parent asks for them (TOSGUARD_PROGRESS=1 in the environment it hands its task
subprocesses), long steps print one marked line now and then; the run console
(tosguard.pipelines.console) reads those lines and shows a step's progress instead of its
log. Anywhere else (a cluster pod, a notebook) nothing is printed: tqdm and the logs
already serve there.
"""
from __future__ import annotations

import os
import re
import sys
import time

MARK = "TOSGUARD-PROGRESS"
PATTERN = re.compile(rf"{MARK} (?P<step>[\w-]+) (?P<done>\d+)/(?P<total>\d+)(?: (?P<note>.*))?$")


class ProgressLine:
    """Prints `TOSGUARD-PROGRESS step done/total note` at most every `interval` seconds,
    and always for the first and the last unit."""

    def __init__(self, step: str, total: int, interval: float = 2.0):
        self.step, self.total, self.interval = step, max(int(total), 1), interval
        self.enabled = os.environ.get("TOSGUARD_PROGRESS") == "1"
        self._last = 0.0

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done not in (1, self.total) and now - self._last < self.interval:
            return
        self._last = now
        note = " ".join(note.split())  # one line, whatever the note holds
        print(f"{MARK} {self.step} {min(done, self.total)}/{self.total}" + (f" {note}" if note else ""),
              file=sys.stdout, flush=True)
