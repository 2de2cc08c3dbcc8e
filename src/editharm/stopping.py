"""SIGTERM and SIGINT stop a run within seconds, wherever it is: inside a long edit or an evaluation.

    with stopping.on_signals():      # tracking.start() opens every run inside this
        ...                          # raises Stopped(signal) at the next Python bytecode

`Stopped` is a `BaseException`, so `except Exception` blocks (a grid's per-cell handler, Lightning's
callbacks) let it through; Lightning re-raises it after its teardown. `tracking.start` marks the run KILLED
with the reason. Lightning's own SIGTERM handling (a flag checked between steps) is what let a long edit run
on for minutes; ours is called from the handler Lightning composes at `fit`, so it still fires.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """The process received `signum` (SIGTERM or SIGINT); the run stops where it is."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (143, 130)."""
        return 128 + self.signum


@contextmanager
def on_signals() -> Iterator[None]:
    """Raise `Stopped` on SIGTERM/SIGINT inside the block (main thread only; elsewhere a no-op). The first
    signal raises; later ones while the run is being closed are ignored, so the KILLED mark gets written.
    Nested blocks (a grid's cell inside its parent) share the outermost handler."""
    if threading.current_thread() is not threading.main_thread() or getattr(signal.getsignal(signal.SIGTERM),
                                                                            "editharm", False):
        yield
        return
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Stopped(signum)

    handler.editharm = True

    before = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)
