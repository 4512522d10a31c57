"""Error types shared by the library and the command line.

* ``UserError``: a mistake in what the user gave us (a config value, a file, a directory, a flag). Its message
  is one line that names the culprit (the config key, the file path, the CLI flag); the CLI prints it to stderr
  as ``error: <message>`` and exits with status 2, without a traceback. Library callers catch it like any
  ``ValueError`` (it subclasses ``ValueError`` so existing ``except ValueError`` code keeps working).
* ``TrainingDiverged``: the weights turned non-finite (or the loss stayed non-finite); a ``UserError`` because
  the fix is a setting (learning rate, loss weights, clipping).
* ``TrainingInterrupted``: SIGINT / SIGTERM stopped a training run after it saved ``last.pt``; the CLI exits
  with status 130. It subclasses ``KeyboardInterrupt`` so code that lets Ctrl-C through still does.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["UserError", "TrainingDiverged", "TrainingInterrupted", "EXIT_USER_ERROR", "EXIT_INTERRUPTED"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(ValueError):
    """A bad input. ``key`` is the config key (``"train.batch_size"``) and ``path`` the file or directory
    concerned, when there is one; both are also part of the message."""

    def __init__(self, message: str, *, key: str | None = None, path: str | Path | None = None):
        super().__init__(" ".join(str(message).split("\n")))  # one line, whatever the caller built
        self.key = key
        self.path = None if path is None else Path(path)


class TrainingDiverged(UserError):
    """Training produced non-finite weights or losses; ``step`` is the global step where it happened."""

    def __init__(self, message: str, *, step: int | None = None, path: str | Path | None = None):
        super().__init__(message, path=path)
        self.step = step


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped on SIGINT / SIGTERM after saving ``checkpoint`` (``None`` when nothing could be saved)."""

    def __init__(self, message: str, checkpoint: str | Path | None = None, signum: int | None = None):
        super().__init__(message)
        self.message = message
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.signum = signum

    def __str__(self) -> str:
        return self.message
