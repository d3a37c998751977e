"""The model directory a training run writes, locked while it does, and cleaned up after a
failure: nothing the user had is lost, and a failed run leaves no debris."""
import fcntl
import os
import shutil

from ..errors import MinembedError
from . import checkpoint as ckpt_mod
from .files import unlink_quietly
from .modeldir import holds_model


class OutputDir:
    """The model directory a run writes: refuses to overwrite a model (or an
    interrupted run's checkpoint) without ``force``; ``open()`` creates it and
    takes an exclusive lock, so two runs never write one directory."""

    def __init__(self, path, force=False, resume=False, check=True):
        self.path, self._lock, self.created = os.fspath(path), None, False
        if check:  # (only the process that writes it: rank 0 of many)
            self._check(force, resume)

    def _check(self, force, resume):
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise MinembedError(f"output path exists and is not a directory: {self.path}")
        if resume and not os.path.isdir(self.path):
            raise MinembedError(f"cannot resume: {self.path} does not exist")
        self._check_unlocked()
        if not resume and os.path.isdir(self.path) and not force:
            if ckpt_mod.has_checkpoint(self.path):
                raise MinembedError(f"{self.path} holds an interrupted training run: continue it "
                                    f"with 'minembed train --resume {self.path}', or use --force "
                                    f"to start over")
            if holds_model(self.path):
                raise MinembedError(f"{self.path} already holds a model; use --force to overwrite "
                                    f"it or choose another output directory")
            if [f for f in os.listdir(self.path) if f != ".lock"]:
                raise MinembedError(f"output directory {self.path} exists and is not empty; "
                                    f"use --force or choose another")

    def _check_unlocked(self):
        lock = os.path.join(self.path, ".lock")
        if os.path.isfile(lock):
            with open(lock) as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise MinembedError(f"{self.path} is being written by another training run "
                                        f"(locked)") from None

    def open(self):
        self.created = not os.path.isdir(self.path)
        os.makedirs(self.path, exist_ok=True)
        self._lock = open(self.file(".lock"), "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise MinembedError(f"{self.path} is being written by another training run "
                                "(locked)") from None

    def file(self, name):
        return os.path.join(self.path, name)

    def close(self, keep=True):
        """Unlock; with keep=False remove what this run wrote (all of it if it made the
        directory)."""
        if self._lock is None:
            return
        if not keep:
            if self.created:
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                for name in ("log.jsonl", ckpt_mod.CHECKPOINT_DIR):
                    shutil.rmtree(self.file(name), ignore_errors=True) \
                        if name == ckpt_mod.CHECKPOINT_DIR else unlink_quietly(self.file(name))
        unlink_quietly(self.file(".lock"))
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
        self._lock = None

