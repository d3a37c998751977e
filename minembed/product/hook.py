"""What a run does after each step (``train_loop``'s ``on_step``): a line in the log, progress,
the time estimate, kNN in the log when asked, a dead run stopped, Ctrl-C, and checkpoints."""
import dataclasses
import json
import signal
import sys
import threading
import time

from ..errors import MinembedError
from . import checkpoint as ckpt_mod
from .distributed import collective

DEAD_STEPS = 20  # a vanished gradient for this many steps in a row: the run is dead


def failed(message):
    """The error of a failed run (dead, diverged, its vectors broken), raised by every process
    at the same step: it leaves no model, and no checkpoint that leads back to the failure."""
    e = collective(MinembedError(message))
    e.failed_run = True
    return e


class StopSignals:
    """While training, Ctrl-C (SIGINT) and SIGTERM (a laptop shutting down) only
    ask the loop to stop at the end of the current step, which then saves a
    checkpoint; a second Ctrl-C aborts at once. Only in the main thread (Python
    delivers signals there); elsewhere signals keep their usual handlers."""

    def __init__(self, loud=True):
        self.requested, self._old, self.loud = False, {}, loud
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.loud:  # (of many processes, rank 0 saves the checkpoint)
            print("\nstopping: saving a checkpoint at the end of this step (Ctrl-C again to abort)",
                  file=sys.stderr)

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)  # None: set outside Python
        self._old = {}


@dataclasses.dataclass
class StepHook:
    """Called after every step as ``hook(step, record)``, step counting from the start of the
    member in training (``offset``: the run's steps before it). Plain fields, set by the run:

    total, start      the run's last step and the step it began after (a resumed run: > 0)
    batch_size, lr    for the log's pairs/s, and the advice when the run dies
    log, bar, say     the open log.jsonl, a Progress, and a function for messages
    member            the member in training (0-based), recorded when ``members`` > 1
    eval_every, evaluate   every eval_every steps, evaluate() -> {name: value} joins the log line
    checkpoint_every  steps between checkpoints (None: every CHECKPOINT_SECONDS; 0: on Ctrl-C only)
    save, out_dir     save(step) writes a checkpoint into the model directory out_dir
    stop, comm        the StopSignals, and the ranks (None: one process)
    t0                the run's clock (a resumed run's starts its elapsed time before now)
    and its own state: offset, member, last_save, dead (steps in a row), peak, first (time)
    """

    total: int
    start: int
    batch_size: int
    lr: float
    log: object
    bar: object
    say: object
    members: int = 1
    eval_every: int = 0
    evaluate: object = None
    checkpoint_every: int = None
    save: object = None
    out_dir: str = None
    stop: object = None
    comm: object = None
    t0: float = dataclasses.field(default_factory=time.perf_counter)  # the run's clock
    offset: int = 0
    member: int = 0
    last_save: float = dataclasses.field(default_factory=time.monotonic)
    dead: int = 0
    peak: float = 0.0
    first: float = 0.0

    def __call__(self, step, r):
        step += self.offset
        rec = {"step": step, **({"member": self.member + 1} if self.members > 1 else {}),
               "epoch": r["epoch"],
               "loss": round(r["loss"], 6), "acc": round(r["acc"], 4), "lr": r["lr"],
               "grad_norm": round(r["grad_norm"], 6),
               "pairs_per_s": round(self.batch_size / r["seconds"], 1),
               "time": round(time.perf_counter() - self.t0, 3)}
        if self.evaluate is not None and self.eval_every and (step % self.eval_every == 0
                                                              or step == self.total):
            rec.update(self.evaluate())
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()
        self.bar.update(1, f"loss {r['loss']:.3f}")
        self._estimate(step)
        self._check_alive(step, r["grad_norm"])
        self._stop_or_save(step)

    def _estimate(self, step):
        """After steps 2-6 (the first one warms up), the time the rest will take."""
        if step == self.start + 1:
            self.first = time.perf_counter()
        if step == self.start + 6 and self.total - step > 20:
            per = (time.perf_counter() - self.first) / 5
            self.say(f"\nestimated training time: {(self.total - step) * per / 60:.1f} min for "
                     f"{self.total - step:,} more steps")

    def _check_alive(self, step, gnorm):
        """Dead: the gradient norm ~0 (1e-4 of its largest so far) for DEAD_STEPS steps in a row."""
        self.peak = max(self.peak, gnorm)
        self.dead = self.dead + 1 if gnorm <= 1e-4 * self.peak else 0
        if self.dead >= DEAD_STEPS:
            raise failed(  # (every process sees the same gradient norm)
                f"training is dead: the gradient vanished ({gnorm:.1e}, from {self.peak:.1e}) for "
                f"{DEAD_STEPS} steps in a row at step {step}; the learning rate {self.lr:g} is "
                f"probably far too high (try a lower --lr); no model was saved")

    def _stop_or_save(self, step):
        if self.comm is not None:  # Ctrl-C on any process stops all, after this step
            self.stop.requested = self.comm.any(self.stop.requested)
        if self.stop.requested:
            self.save(step)
            raise collective(ckpt_mod.TrainingInterrupted(step, self.out_dir))  # all stop here
        every = self.checkpoint_every
        due = every and step % every == 0 or every is None and \
            time.monotonic() - self.last_save >= ckpt_mod.CHECKPOINT_SECONDS
        if step < self.total and due:
            self.save(step)
            self.last_save = time.monotonic()
