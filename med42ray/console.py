"""What a user sees while a run goes on, and where everything else goes.

The console carries one line per stage (`[2/6] train-full  running ...`, then `done in 41s:
...`), the stage's own progress (records, optimiser steps with loss, tokens/s and ETA, items
scored) and real warnings; Ray's and the libraries' output goes to `OUT/logs/<stage>.log`
(`LogCapture`). On a terminal the progress is a tqdm bar updated in place; elsewhere (CI,
`ray job logs`, a file) it is a plain line at most every `every_s` seconds and one at the end,
so a long stage shows it is alive without flooding the log.

Not Ray's own progress bars: they follow Ray Data operators, not the stage (a scoring pass is
one operator; a training is none), and they print to the stream the log files take.

A process has one console (`current()`; the CLI installs one with `use()`); without one, lines
go to the `med42ray.console` logger, so library calls and tests print what they did before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)

#: Seconds between two plain progress lines of one bar when the output is not a terminal.
PLAIN_EVERY_S = 30.0


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`: short enough for a progress line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class Progress:
    """One stage's progress: `update(done, **fields)` or `advance(n)`; `close()` at the end.

    Plain mode prints `label  done/total unit  fields  ETA` when `every_s` has passed since the
    last line, and once more on `close()` if anything changed since."""

    console: Console
    label: str
    total: int | None
    unit: str
    done: int = 0
    fields: dict[str, str] = field(default_factory=dict)
    _bar: Any = None
    _printed: float = 0.0
    _printed_done: int = -1
    _first: tuple[float, int] | None = None  # (time, count) of the first update with progress

    def __post_init__(self) -> None:
        self._printed = self.console.clock()
        if self.console.interactive:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=self.label,
                unit=f" {self.unit}",
                file=self.console.stream,
                leave=False,
                dynamic_ncols=True,
            )

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.update(self.done + n, **fields)

    def update(self, done: int, total: int | None = None, **fields: Any) -> None:
        """Set the count (and the total, when it becomes known) and the shown fields."""
        self.total = total if total is not None else self.total
        self.fields.update({k: str(v) for k, v in fields.items()})
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.update(done - self.done)
            self._bar.set_postfix_str("  ".join(self.fields.values()), refresh=True)
        self.done = done
        if self._first is None and done > 0:
            self._first = (self.console.clock(), done)
        if self._bar is None and self.console.clock() - self._printed >= self.console.every_s:
            self._print()

    def eta(self) -> str | None:
        """Time left at the mean rate since the first progress seen (not since the start: a
        training's workers take a while to start, a resumed one starts past 0)."""
        if not self.total or self._first is None or self.done >= self.total:
            return None
        since, first = self._first
        if self.done <= first:
            return None
        rate = (self.done - first) / max(self.console.clock() - since, 1e-9)
        return duration((self.total - self.done) / rate)

    def line(self) -> str:
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        parts = [self.label, f"{count} {self.unit}", *self.fields.values()]
        eta = self.eta()
        return "  ".join(parts + ([f"ETA {eta}"] if eta else []))

    def _print(self) -> None:
        self.console.say("      " + self.line())
        self._printed, self._printed_done = self.console.clock(), self.done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.done and self.done != self._printed_done:
            self._print()


@dataclass
class Console:
    """Stage lines and progress for one process; `stream=None` sends lines to the logger."""

    stream: TextIO | None = None
    interactive: bool = False
    every_s: float = PLAIN_EVERY_S
    log_dir: Path | None = None
    clock: Callable[[], float] = time.monotonic
    planned: list[str] = field(default_factory=list)
    capture: LogCapture | None = None

    def say(self, text: str) -> None:
        if self.stream is None:
            log.info("%s", text)
            return
        if self.interactive:
            from tqdm.auto import tqdm

            tqdm.write(text, file=self.stream)  # above any bar, not through it
        else:
            print(text, file=self.stream, flush=True)

    def plan(self, names: list[str]) -> None:
        """The stages this run goes through, for `[i/n]`."""
        self.planned = list(names)

    def _head(self, name: str) -> str:
        """`[2/6] train-full      ` for a planned stage, the name alone for another."""
        if name in self.planned:
            return f"[{self.planned.index(name) + 1}/{len(self.planned)}] {name:<16}"
        return name

    def log_of(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir else None

    def stage_started(self, name: str, location: str, cached: bool) -> None:
        """`[i/n] name  cached|running  location`; a running stage's output goes to its log."""
        state = "cached " if cached else "running"
        self.say(f"{self._head(name)} {state}  {location}")
        if not cached and self.capture is not None:
            self.capture.to(name)

    def stage_finished(self, name: str, wall_s: float, detail: str = "") -> None:
        self.say(
            f"{self._head(name)} done in {duration(wall_s)}" + (f": {detail}" if detail else "")
        )
        if self.capture is not None:
            self.capture.to(self.capture.first)

    def stage_failed(self, name: str, reason: str) -> None:
        where = self.log_of(name)
        self.say(f"{self._head(name)} FAILED: {reason}" + (f" (log: {where})" if where else ""))
        if self.capture is not None:
            self.capture.to(self.capture.first)

    def progress(self, label: str, total: int | None, unit: str) -> Progress:
        return Progress(self, label, total, unit)

    @contextlib.contextmanager
    def following(
        self, progress: Progress, read: Callable[[], dict[str, Any] | None], every_s: float = 2.0
    ) -> Iterator[Progress]:
        """Poll `read()` (`{"done", "total", **fields}` or None) every `every_s` seconds in a
        thread while the block runs, feeding `progress`; closed at the end."""
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(every_s):
                _feed(progress, read)

        thread = threading.Thread(target=poll, name=f"follow-{progress.label}", daemon=True)
        thread.start()
        try:
            yield progress
        finally:
            stop.set()
            thread.join()
            _feed(progress, read)
            progress.close()


def _feed(progress: Progress, read: Callable[[], dict[str, Any] | None]) -> None:
    try:
        state = read()
    except Exception:  # a half-written or unreachable file: the next poll sees it
        log.debug("progress of %s not readable", progress.label, exc_info=True)
        return
    if state:
        state = dict(state)
        progress.update(int(state.pop("done")), state.pop("total", None), **state)


_CURRENT = Console()


def current() -> Console:
    """This process's console (a logger-backed one unless the CLI installed another)."""
    return _CURRENT


@contextlib.contextmanager
def use(console: Console) -> Iterator[Console]:
    """Make `console` the process's console for the block."""
    global _CURRENT
    before, _CURRENT = _CURRENT, console
    try:
        yield console
    finally:
        _CURRENT = before


class LogCapture:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so Ray's C++ logs, the
    workers' output Ray forwards to the driver and every library's prints too) to
    `log_dir/<name>.log`; `to(name)` switches files. `console_stream` writes to what stdout was.
    """

    def __init__(self, log_dir: Path, first: str = "run"):
        self.log_dir = Path(log_dir)
        self.first = first
        self.name: str | None = None
        self._saved: tuple[int, int] | None = None
        self._file: Any = None
        self.console_stream: TextIO | None = None

    def __enter__(self) -> LogCapture:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _flush()
        self._saved = (os.dup(1), os.dup(2))
        self.console_stream = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        self.to(self.first)
        return self

    def to(self, name: str) -> None:
        """From now on, output goes to `log_dir/<name>.log` (appended: a rerun adds to it)."""
        if name == self.name:
            return
        _flush()
        handle = open(self.log_dir / f"{name}.log", "a", encoding="utf-8")  # noqa: SIM115
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        if self._file is not None:
            self._file.close()
        self._file, self.name = handle, name

    def __exit__(self, *exc: Any) -> None:
        global _LAST_LOG
        _flush()
        if self.name is not None:
            _LAST_LOG = self.log_dir / f"{self.name}.log"
        if self._saved is not None:
            os.dup2(self._saved[0], 1)
            os.dup2(self._saved[1], 2)
            for fd in self._saved:
                os.close(fd)
        for handle in (self._file, self.console_stream):
            if handle is not None:
                handle.close()
        self._saved = self._file = self.name = self.console_stream = None


_LAST_LOG: Path | None = None  # where the last capture of this process wrote


def end_quietly(restore: bool = False) -> None:
    """At the end of a command: Ray's shutdown (and the workers' last lines its log monitor
    still forwards) written to the last capture's log, not after the command's last line.
    With `restore`, stdout and stderr are the console again afterwards (a stage command then
    prints its result)."""
    if _LAST_LOG is None or "ray" not in sys.modules:
        return
    import ray

    if not ray.is_initialized():
        return
    _flush()
    saved = [os.dup(1), os.dup(2)] if restore else []
    with open(_LAST_LOG, "a", encoding="utf-8") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    try:
        ray.shutdown()
        _flush()
    finally:
        for fd, copy in zip((1, 2), saved, strict=False):
            os.dup2(copy, fd)
            os.close(copy)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


class ConsoleWarnings(logging.Handler):
    """Warnings and errors of the process's loggers on the console too, one line each, with
    the path of the log that has the whole story; known noise that is no error stays out."""

    NOISE = ("has constructor arguments in the object store",)

    def __init__(self, console: Console):
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().strip().splitlines()
        if not message or any(n in message[0] for n in self.NOISE):
            return
        capture = self.console.capture
        where = capture.log_dir / f"{capture.name}.log" if capture and capture.name else None
        level = record.levelname.lower()
        self.console.say(f"{level}: {message[0]}" + (f" (log: {where})" if where else ""))


@contextlib.contextmanager
def run_console(log_dir: Path, verbose: bool = False, name: str = "run") -> Iterator[Console]:
    """The CLI's console for a stage command or `run`: output captured into
    `log_dir/<name>.log` (each stage's into its own) unless `verbose`; stage lines and progress
    on what stdout was, warnings there too."""
    if verbose:
        console = Console(sys.stdout, sys.stdout.isatty(), log_dir=None)
        with use(console):
            yield console
        return
    with LogCapture(log_dir, name) as capture:
        stream = capture.console_stream
        console = Console(stream, bool(stream and stream.isatty()), log_dir=Path(log_dir))
        console.capture = capture
        handler = ConsoleWarnings(console)
        logging.getLogger().addHandler(handler)
        try:
            with use(console):
                yield console
        finally:
            logging.getLogger().removeHandler(handler)
            if stream is not None:
                stream.flush()
