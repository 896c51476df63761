"""The signals a scheduler or a cloud sends before it stops a job, turned into a clean stop.

Slurm and Kubernetes send SIGTERM (Slurm's ``--signal`` SIGUSR1 or another
one) some seconds before SIGKILL; preemptible VMs and TPU hosts SIGTERM;
batch systems SIGUSR1/SIGUSR2; a closed terminal SIGHUP. While a run trains,
``stop_signals`` records the first of these instead of dying; the run
checkpoints at the next chunk boundary, writes what it has and stops with
one line saying how to continue (``sidjax.train.stops.RunStopped``).
Ctrl-C (SIGINT) keeps its own meaning: stop now.

A signal the run was started to ignore stays ignored: ``nohup sidjax train
... &`` asked for SIGHUP to be ignored, so closing the terminal does not stop
that run (a shell's background job likewise ignores SIGINT).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP") if hasattr(signal, name)
)


class StopRequest:
    """The first stop signal received, if any (``signum`` None until then)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __bool__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_signals() -> Iterator[StopRequest]:
    """Records ``STOP_SIGNALS`` while inside; the previous handlers come back on the way out.

    A signal whose disposition is "ignore" when the run starts (``nohup``'s
    SIGHUP) is left ignored. Outside the main thread (where Python cannot
    install handlers) nothing is installed and no signal is ever recorded.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def record(signum, frame):
        if request.signum is None:
            request.signum = signum

    honoured = [s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, record) for s in honoured}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def check_stop(stop: StopRequest | None, where: str) -> None:
    """Raises ``RunStopped`` where a stop signal came between the runs of a sweep (nothing is being written
    then: every finished run is kept, and the same command continues)."""
    if stop:
        from sidjax.train.stops import RunStopped

        raise RunStopped(f"stopped by {stop.name} {where}; the finished runs are kept", stop.signum, True)
