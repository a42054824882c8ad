"""`tosguard run`'s terminal view: each step with its status, time and progress, while
everything the executors and libraries print goes to a log file.

kfp.local writes its task banners through the root logger and streams each task's output
with print(), both to sys.stdout as it finds it when a task starts. RunConsole takes the
place of sys.stdout and sys.stderr for the run: every byte goes to the log file, and the
lines that matter (a task started, a task finished, a step's TOSGUARD-PROGRESS line) drive
a short view on the real terminal. `verbose` streams everything to the terminal as well.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
from collections import deque
from pathlib import Path

from tosguard.components.progress import PATTERN

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
STARTED = re.compile(r"Executing task '(?P<task>[^']+)'")
FINISHED = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>\w+)")
SKIPPED = re.compile(r"Skipping task (?P<task>[\w-]+)")
# What a person reads instead of the pipeline's task names.
LABELS = {
    "open-run": "open MLflow run", "download-data": "download data", "tokenize-data": "tokenize",
    "train-model": "train", "train-with-trainjob": "train (TrainJob)", "evaluate-model": "evaluate and gate",
    "deploy-local": "deploy (local server)", "deploy-model": "deploy", "close-run": "close MLflow run",
}


def _clock(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


class RunConsole(io.TextIOBase):
    """A text stream: all of it into `log_path`, a step-by-step view onto `terminal`."""

    def __init__(self, terminal, log_path: Path, verbose: bool = False, tty: bool | None = None,
                 report_every: float = 30.0):
        self.terminal, self.verbose = terminal, verbose
        self.log_path = Path(log_path)
        self.log = self.log_path.open("a", encoding="utf-8", errors="replace")
        self.tty = terminal.isatty() if tty is None else tty
        self.report_every = report_every
        self.pending = ""
        self.task: str | None = None
        self.task_started = 0.0
        self.tail: deque[str] = deque(maxlen=40)  # the running task's last lines, for a failure
        self.last_shown = 0.0
        self.last_quarter = -1
        self.live = False  # a progress line is drawn in place (TTY) and must be ended first
        self.failed_task: str | None = None

    # -- the stream --------------------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # libraries must not draw bars into the log

    def write(self, text: str) -> int:
        self.log.write(text)
        if "\n" in text:
            self.log.flush()  # a person may be following the log with tail -f
        if self.verbose:
            self.terminal.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(ANSI.sub("", line.split("\r")[-1]).strip())
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()

    def close(self) -> None:
        if self.closed:
            return
        self._end_live()
        super().close()  # flushes, so the log must still be open
        self.log.close()

    # -- what the view shows -------------------------------------------------------------------
    def _end_live(self) -> None:
        if self.live:
            self.terminal.write("\n")
            self.live = False

    def _show(self, text: str, in_place: bool = False) -> None:
        if self.verbose:
            return  # the stream itself is on the terminal
        if in_place and self.tty:
            self.terminal.write("\r\x1b[2K" + text)
            self.live = True
        else:
            self._end_live()
            self.terminal.write(text + "\n")
        self.terminal.flush()

    def _line(self, line: str) -> None:
        if not line:
            return
        if self.task:
            self.tail.append(line)
        if m := STARTED.search(line):
            self.task, self.task_started = m["task"], time.monotonic()
            self.tail.clear()
            self.last_shown, self.last_quarter = 0.0, -1
            if self.tty:  # in place; a log without a TTY gets the step's one "done" line
                self._show(f"  {LABELS.get(self.task, self.task):24s} running", in_place=True)
        elif m := FINISHED.search(line):
            task, status = m["task"], m["status"]
            took = time.monotonic() - self.task_started if self.task == task else 0.0
            mark = "done" if status == "SUCCESS" else status.lower()
            self._show(f"  {LABELS.get(task, task):24s} {mark:8s} {_clock(took)}")
            if status != "SUCCESS":
                self.failed_task = task
            self.task = None
        elif m := SKIPPED.search(line):
            self._show(f"  {LABELS.get(m['task'], m['task']):24s} skipped")
        elif m := PATTERN.search(line):
            self._progress(int(m["done"]), int(m["total"]), m["note"] or "")

    def _progress(self, done: int, total: int, note: str) -> None:
        now = time.monotonic()
        fraction = done / max(total, 1)
        label = LABELS.get(self.task or "", self.task or "")
        elapsed = now - self.task_started
        # A time left only once the rate means something (the first steps include warm-up).
        eta = f", about {_clock(elapsed * (1 - fraction) / fraction)} left" if 0.1 <= fraction < 1 else ""
        text = f"  {label:24s} {100 * fraction:3.0f}%     {done}/{total} {note}{eta}"
        if self.tty:
            if now - self.last_shown >= 0.5 or done == total:
                self.last_shown = now
                self._show(text, in_place=True)
        # Without a TTY: a line per 25% or per `report_every` seconds, whichever comes first.
        elif int(fraction * 4) > self.last_quarter or now - self.last_shown >= self.report_every:
            if done == total:
                return  # the task's own "done" line follows
            self.last_shown, self.last_quarter = now, int(fraction * 4)
            self._show(text)

    def failure_tail(self) -> list[str]:
        """The last lines the failed (or running) task printed, for the error message."""
        return list(self.tail)


@contextlib.contextmanager
def run_console(log_path: Path, verbose: bool = False):
    """Route stdout, stderr and the progress switch through a RunConsole for the block."""
    terminal = sys.stdout
    console = RunConsole(terminal, log_path, verbose=verbose)
    previous = os.environ.get("TOSGUARD_PROGRESS")
    os.environ["TOSGUARD_PROGRESS"] = "1"  # the task subprocesses print progress lines
    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = console
    # Handlers made earlier (logging.basicConfig) hold the old streams: point them here too.
    moved = [h for h in logging.getLogger().handlers
             if isinstance(h, logging.StreamHandler) and h.stream in (old_out, old_err)]
    previous_streams = [h.setStream(console) for h in moved]
    try:
        yield console
    finally:
        for handler, stream in zip(moved, previous_streams):
            handler.setStream(stream)
        sys.stdout, sys.stderr = old_out, old_err
        if previous is None:
            os.environ.pop("TOSGUARD_PROGRESS", None)
        else:
            os.environ["TOSGUARD_PROGRESS"] = previous
        console.close()
