"""The console: stage lines, progress as periodic plain lines off a terminal and in-place bars
on one, and the capture of everything else into per-stage log files."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from med42ray.console import Console, duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain(every_s: float = 30.0) -> tuple[Console, io.StringIO, Clock]:
    stream, clock = io.StringIO(), Clock()
    return Console(stream, interactive=False, every_s=every_s, clock=clock), stream, clock


def test_plain_progress_prints_a_line_every_period_and_one_at_the_end() -> None:
    console, stream, clock = plain()
    progress = console.progress("training", None, "steps")
    for second, step in [(10, 1), (20, 2), (31, 3), (50, 4), (62, 5), (70, 6)]:
        clock.now = 1000.0 + second
        progress.update(step, 10, loss=f"loss {1 / step:.3f}")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["3/10", "5/10", "6/10"]
    # the rate since the first step seen: 2 steps in 21 s, then 5 in 60 s
    assert lines[0].split() == ["training", "3/10", "steps", "loss", "0.333", "ETA", "1m14s"]
    assert lines[-1].endswith("ETA 48s")


def test_close_prints_nothing_new_when_the_last_line_is_current() -> None:
    console, stream, clock = plain(every_s=5)
    progress = console.progress("scoring", 4, "requests")
    clock.now += 6
    progress.advance(4)
    progress.close()
    assert stream.getvalue().splitlines() == ["      scoring  4/4 requests"]
    empty = console.progress("scoring", 0, "requests")
    empty.close()
    assert len(stream.getvalue().splitlines()) == 1  # nothing done, nothing said


def test_stage_lines_name_the_position_in_the_plan() -> None:
    console, stream, _ = plain()
    console.plan(["data", "train-full", "eval-base"])
    console.stage_started("data", "out/data-abc", cached=True)
    console.stage_started("train-full", "out/train-full-def", cached=False)
    console.stage_finished("train-full", 125.4, "final loss 0.4")
    console.stage_failed("eval-base", "ValueError: bad")
    console.stage_started("other", "x", cached=False)
    assert stream.getvalue().splitlines() == [
        "[1/3] data             cached   out/data-abc",
        "[2/3] train-full       running  out/train-full-def",
        "[2/3] train-full       done in 2m05s: final loss 0.4",
        "[3/3] eval-base        FAILED: ValueError: bad",
        "other running  x",
    ]


def test_following_feeds_a_bar_from_a_polled_record() -> None:
    console, stream, _ = plain(every_s=0)
    states = iter([None, {"done": 2, "total": 4, "loss": "loss 1.0"}])
    last = {"done": 4, "total": 4, "loss": "loss 0.5"}

    def read():
        return next(states, last)

    deadline = time.monotonic() + 10
    with console.following(console.progress("training", None, "steps"), read, every_s=0.01):
        while "4/4" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert stream.getvalue().splitlines()[-1].split() == ["training", "4/4", "steps", "loss", "0.5"]


def test_a_terminal_gets_bars_and_lines_above_them() -> None:
    stream = io.StringIO()
    console = Console(stream, interactive=True)
    progress = console.progress("scoring", 10, "requests")
    progress.advance(5)
    console.say("a stage line")
    progress.close()
    text = stream.getvalue()
    assert "\r" in text and "5/10" in text and "a stage line\n" in text


def test_durations() -> None:
    assert [duration(s) for s in (0.4, 59, 61, 3599, 3600 * 2 + 420)] == [
        "0s",
        "59s",
        "1m01s",
        "59m59s",
        "2h07m",
    ]


CAPTURED = textwrap.dedent(
    """
    import logging, os, subprocess, sys
    from pathlib import Path
    from med42ray.console import current, run_console

    logging.basicConfig(level=logging.INFO)
    with run_console(Path(sys.argv[1]), verbose=sys.argv[2] == "1") as shown:
        shown.plan(["train-full"])
        print("setting up")
        shown.stage_started("train-full", "out/train-full-abc", cached=False)
        print("a worker line")
        os.write(2, b"[2026 E 1 1] core_worker.cc: Actor has constructor arguments\\n")
        subprocess.run(["echo", "from a child process"], check=True)
        logging.getLogger("med42ray.x").info("an info line")
        logging.getLogger("med42ray.x").warning("disk almost full")
        logging.getLogger("ray").warning("... has constructor arguments in the object store ...")
        current().stage_finished("train-full", 3.0, "ok")
        print("after the stage")
    print("restored")
    """
)


def run_captured(tmp_path: Path, verbose: bool) -> tuple[list[str], Path]:
    logs = tmp_path / "logs"
    done = subprocess.run(
        [sys.executable, "-c", CAPTURED, str(logs), "1" if verbose else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines(), logs


def test_output_goes_to_the_stage_logs_and_the_console_keeps_its_lines(tmp_path: Path) -> None:
    console, logs = run_captured(tmp_path, verbose=False)
    assert console == [
        "[1/1] train-full       running  out/train-full-abc",
        f"warning: disk almost full (log: {logs / 'train-full.log'})",
        "[1/1] train-full       done in 3s: ok",
        "restored",
    ]
    stage = (logs / "train-full.log").read_text()
    for line in ("a worker line", "core_worker.cc", "from a child process", "an info line"):
        assert line in stage
    assert (logs / "run.log").read_text().split() == ["setting", "up", "after", "the", "stage"]


def test_verbose_leaves_the_output_where_it_was(tmp_path: Path) -> None:
    console, logs = run_captured(tmp_path, verbose=True)
    assert "a worker line" in console and "from a child process" in console
    assert not logs.exists()
