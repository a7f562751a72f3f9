"""The run folder: what a training run writes, who may write it, and what a killed run leaves behind.

A run folder holds ``checkpoint.safetensors``, ``config.yaml``, ``metrics.csv``, ``evals.csv``, ``loss.png`` and
``tensorboard/`` (`RUN_FILES`). Three rules keep a user's work and a run's work safe:

- **One writer.** `RunLock` holds the folder for one process (an ``fcntl.flock`` on ``.scoresde.lock``, which
  records the owner's pid); a second trainer is refused in one line, and the lock of a process that died is
  released by the kernel, so the next run takes it over.
- **Nothing foreign is touched.** A fresh run starts only in a folder without run files, or with ``overwrite``
  (``--force``), which removes the run files and nothing else.
- **A kill leaves a resumable run.** `remove_stale_temporaries` deletes the partial checkpoint files of writers
  that are gone, and `truncate_log` drops the log rows written after the checkpoint a run resumes from, so that
  the resumed run appends each step once.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from pathlib import Path

from .._io import write_atomic

__all__ = [
    "RUN_FILES",
    "LOCK_FILE",
    "RunFolderError",
    "RunLock",
    "run_files",
    "remove_run_files",
    "remove_stale_temporaries",
    "truncate_log",
]

RUN_FILES = ("checkpoint.safetensors", "config.yaml", "metrics.csv", "evals.csv", "loss.png", "tensorboard", "ema")
"""Everything a training run writes into its folder (``--force`` removes these and nothing else)."""

LOCK_FILE = ".scoresde.lock"
_TEMPORARY = re.compile(r"^\.checkpoint\.safetensors\.tmp-(\d+)$|^\.tmp[A-Za-z0-9]{6}$")
"""Partial checkpoints: ours (``.NAME.tmp-PID``) and the ``.tmpXXXXXX`` files of safetensors' ``save_file``, which
wrote the checkpoints of earlier scoresde versions."""


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked: held by another process, or holding files of another run."""


def run_files(folder: str | Path) -> list[Path]:
    """The run files (`RUN_FILES`) present in ``folder``."""
    folder = Path(folder)
    return [folder / name for name in RUN_FILES if (folder / name).exists()]


def remove_run_files(folder: str | Path) -> list[Path]:
    """Delete the run files of ``folder`` (what ``--force`` replaces); other files stay. Returns what was removed."""
    removed = run_files(folder)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete partial checkpoint files left by writers that were killed: those of a dead process and this
    process's own (it is not writing while it cleans); a live process's file is kept. Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if match is None or not path.is_file():
            continue
        pid = int(match.group(1)) if match.group(1) else 0
        if pid and pid != os.getpid() and _alive(pid):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def truncate_log(path: str | Path, step: int) -> int:
    """Keep the rows of the CSV log ``path`` whose ``step`` is at most ``step`` (and drop a row a kill cut short),
    rewriting the file atomically; returns the number of rows dropped (0 when there is no file)."""
    path = Path(path)
    if not path.is_file():
        return 0
    text = path.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return 0
    header, body = rows[0], rows[1:]
    column = header.index("step") if "step" in header else None
    keep = [row for row in body if column is not None and len(row) == len(header) and _step_of(row[column]) <= step]
    dropped = len(body) - len(keep)
    if dropped or not text.endswith("\n"):
        buffer = io.StringIO()
        csv.writer(buffer).writerows([header, *keep])
        write_atomic(path, buffer.getvalue().encode())
    return dropped


def _step_of(text: str) -> float:
    try:
        return int(text)
    except ValueError:
        return float("inf")  # a row cut short by a kill


class RunLock:
    """Hold ``folder`` for this process while a run writes it (a context manager).

    ``.scoresde.lock`` is locked with ``fcntl.flock`` and records the owner's pid; a second `RunLock` on the same
    folder, from this or another process, raises `RunFolderError` naming that pid. The kernel releases the lock
    of a process that dies, so a killed run's folder is taken over by the next one. Where ``fcntl`` is missing
    (Windows), the file is created exclusively and a lock whose pid is not alive is taken over.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None
        self.left = False
        """Whether the lock file could not be removed on release (it holds no lock then; the next run reuses it)."""

    def __enter__(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ModuleNotFoundError:
            self._fd = self._acquire_exclusive()
        else:
            self._fd = self._acquire_flock(fcntl)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: a waiting process never takes a removed file
        except OSError:  # the folder was made read-only meanwhile: the file stays, emptied and unlocked
            os.ftruncate(self._fd, 0)
            self.left = True
        os.close(self._fd)  # releases the flock
        self._fd = None

    def _refuse(self) -> RunFolderError:
        try:
            owner = self.path.read_text().strip() or "?"
        except OSError:
            owner = "?"
        return RunFolderError(
            f"{self.folder} is in use by another training process (pid {owner}); wait for it to finish, stop it, "
            f"or choose another --out"
        )

    def _acquire_flock(self, fcntl) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._refuse() from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # the file we locked was removed by its releasing owner: lock the new one

    def _acquire_exclusive(self) -> int:
        for _ in range(2):
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                try:
                    owner = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    owner = 0
                if owner and _alive(owner):
                    raise self._refuse() from None
                self.path.unlink(missing_ok=True)  # a dead owner's lock
        raise self._refuse()
