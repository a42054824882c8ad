"""tosguard run's terminal view (pipelines/console.py) fed the lines kfp.local really
prints: task banners through logging (with its colour codes), streamed task output, and
the steps' TOSGUARD-PROGRESS lines."""
from __future__ import annotations

import io
import logging
import sys

from tosguard.components.progress import ProgressLine
from tosguard.pipelines.console import RunConsole, run_console

CYAN, GREEN, RED, RESET = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"


class Terminal(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _feed(console: RunConsole, failing: bool = False) -> None:
    console.write(f"17:40:01.100 - INFO - Executing task {CYAN}'train-model'{RESET}\n")
    console.write("17:40:01.101 - INFO - Streamed logs:\n\n")
    console.write("    /site-packages/x.py:12: FutureWarning: something deprecated\n")
    for done in (1, 16, 32, 48, 64):
        console.write(f"    TOSGUARD-PROGRESS train {done}/64 epoch 1, loss 0.05\n")
    console.write("    train:  50%|#####     | 32/64 [00:10<00:10]\rtrain: 100%|##########| 64/64\n")
    if failing:
        console.write("    ValueError: train.jsonl line 3: label 12 is not one of the 8 categories\n")
        console.write(f"17:40:30.000 - ERROR - Task {CYAN}'train-model'{RESET} finished with status {RED}FAILURE{RESET}\n")
    else:
        console.write(f"17:40:30.000 - INFO - Task {CYAN}'train-model'{RESET} finished with status {GREEN}SUCCESS{RESET}\n")
    console.write("17:40:30.001 - INFO - Skipping task deploy-local: upstream task(s) were skipped\n")


def test_without_a_tty_the_view_is_a_few_lines_and_the_log_gets_everything(tmp_path):
    terminal = Terminal(tty=False)
    console = RunConsole(terminal, tmp_path / "run.log")
    _feed(console)
    console.close()
    view = terminal.getvalue().splitlines()
    # The first step's line says training started; then one per quarter; no "100%" before "done".
    assert view[0].split() == ["train", "2%", "1/64", "epoch", "1,", "loss", "0.05"]
    assert "left" in view[1]
    assert [line.split()[:2] for line in view] == [["train", "2%"], ["train", "25%"], ["train", "50%"],
                                                   ["train", "75%"], ["train", "done"], ["deploy", "(local"]]
    assert "skipped" in view[-1] and "FutureWarning" not in terminal.getvalue()
    log = (tmp_path / "run.log").read_text()
    assert "FutureWarning" in log and "Executing task" in log and log.count("TOSGUARD-PROGRESS") == 5


def test_on_a_tty_progress_redraws_one_line_and_a_failure_keeps_the_step_tail(tmp_path):
    terminal = Terminal(tty=True)
    console = RunConsole(terminal, tmp_path / "run.log")
    _feed(console, failing=True)
    console.close()
    shown = terminal.getvalue()
    assert "\r\x1b[2K" in shown and "running" in shown  # drawn in place
    assert shown.count("\n") <= 3, shown
    assert "failure" in shown and console.failed_task == "train-model"
    assert any("train.jsonl line 3" in line for line in console.failure_tail())


def test_verbose_streams_everything(tmp_path):
    terminal = Terminal(tty=False)
    console = RunConsole(terminal, tmp_path / "run.log", verbose=True)
    _feed(console)
    console.close()
    assert terminal.getvalue() == (tmp_path / "run.log").read_bytes().decode()


def test_run_console_takes_stdout_stderr_logging_and_the_progress_switch_and_gives_them_back(tmp_path, monkeypatch):
    monkeypatch.delenv("TOSGUARD_PROGRESS", raising=False)
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    before = sys.stdout, sys.stderr
    try:
        with run_console(tmp_path / "run.log") as console:
            print("from print")
            print("to stderr", file=sys.stderr)
            logging.getLogger("tosguard.test").warning("from logging")
            line = ProgressLine("train", 3, interval=0)
            assert line.enabled  # subprocesses inherit the switch
            line.update(1, "epoch 1")
        assert (sys.stdout, sys.stderr) == before and handler.stream is before[1]
        assert console.closed
    finally:
        logging.getLogger().removeHandler(handler)
    log = (tmp_path / "run.log").read_text()
    assert "from print" in log and "to stderr" in log and "from logging" in log
    assert "TOSGUARD-PROGRESS train 1/3 epoch 1" in log
    assert not ProgressLine("train", 3).enabled  # the switch is off again
