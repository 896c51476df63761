"""How a run ends before its last epoch: Ctrl-C, a stop signal, or a loss that diverged."""

from __future__ import annotations


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was saved and how to continue."""


class TrainingDiverged(FloatingPointError):
    """The loss stopped being finite, or grew far beyond a uniform guess's; the message names the
    epoch and the likely cause."""


DIVERGED = 100.0  # an epoch whose last unit's training CE exceeds this many times log(N) has diverged


class RunStopped(SystemExit):
    """A stop signal (SIGTERM, SIGUSR1, SIGUSR2, SIGHUP) ended the run at a checkpoint.

    A ``SystemExit`` (as Ctrl-C's ``RunInterrupted`` is a ``KeyboardInterrupt``):
    uncaught, it ends your script with status 128 + the signal's number, as
    the shell reports a process that signal ended, after ``run`` has logged
    its message; ``except Exception`` does not swallow it.

    Attributes:
      signum: the signal.
      saved: whether the point it stopped at was checkpointed (``resume`` continues there).
      code: the exit status, 128 + ``signum``.
    """

    def __init__(self, message: str, signum: int, saved: bool):
        super().__init__(message)
        self.signum, self.saved = signum, saved
        self.code = 128 + signum
