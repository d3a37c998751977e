"""Progress on stderr: one redrawn line on a terminal, a plain line every few
seconds elsewhere (a pipe, nohup, CI), so that a log file shows a run moving.

    bar = Progress(total=819, label="training", unit="step")
    bar.update(1, "loss 2.31")     # after each step
    bar.close()

The rate is smoothed (an exponential moving average of seconds per unit), and
the time left counts only the units still to do in this process, so a resumed
run's estimate is right from its first steps.
"""
import os
import sys
import time

# seconds between lines off a terminal
EVERY = float(os.environ.get("MINEMBED_PROGRESS_SECONDS", 10))


def _clock(seconds):
    s = int(round(seconds))
    return (f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600
            else f"{s // 60}:{s % 60:02d}")


class Progress:
    def __init__(self, total=None, label="", unit="", done=0, quiet=False, file=None, every=None):
        self.total, self.label, self.unit, self.done = total, label, unit, done
        self.file = file or sys.stderr
        self.quiet = quiet
        self.tty = self.file.isatty()
        self.every = (0.2 if self.tty else EVERY) if every is None else every
        self.t0 = self.t_last = self.t_shown = time.perf_counter()
        self.rate = None          # smoothed seconds per unit
        self.n_since = 0
        self.status = ""

    def update(self, n=1, status=None):
        if self.quiet:
            return
        now = time.perf_counter()
        self.done += n
        self.n_since += n
        if status is not None:
            self.status = status
        if now - self.t_last > 0 and self.n_since:
            per = (now - self.t_last) / self.n_since
            self.rate = per if self.rate is None else 0.8 * self.rate + 0.2 * per
            self.t_last, self.n_since = now, 0
        if now - self.t_shown >= self.every:
            self.t_shown = now
            self._show(now)

    def _show(self, now, end=False):
        parts = [f"{self.label}:" if self.label else ""]
        if self.total:
            parts.append(f"{self.done:,}/{self.total:,} {self.unit}s "
                         f"({100 * self.done / self.total:.0f}%)")
        else:
            parts.append(f"{self.done:,} {self.unit}s")
        if self.status:
            parts.append(self.status)
        if self.rate:
            parts.append(f"{1 / self.rate:,.1f} {self.unit}s/s" if self.rate < 1
                         else f"{self.rate:.2f} s/{self.unit}")
        if self.total and self.rate and not end and self.done < self.total:
            parts.append(f"{_clock((self.total - self.done) * self.rate)} left")
        parts.append(f"{_clock(now - self.t0)} elapsed")
        line = "  ".join(p for p in parts if p)
        if self.tty:
            self.file.write("\r" + line + "\x1b[K" + ("\n" if end else ""))
        else:
            self.file.write(line + "\n")
        self.file.flush()

    def close(self):
        if not self.quiet:
            self._show(time.perf_counter(), end=True)


class TokenizeProgress:
    """``progress`` for tokenize.tokenize_corpus: documents, tokens and text read (with the
    file's size, roughly how far), on stderr."""

    def __init__(self, total_bytes=None):
        self.bar, self.total = Progress(label="tokenising", unit="document"), total_bytes

    def __call__(self, n_docs, n_tokens, n_chars=0):
        pct = f"~{min(99, 100 * n_chars // self.total)}% of the file, " if self.total else ""
        self.bar.update(n_docs - self.bar.done,
                        f"{pct}{n_tokens:,} tokens, {n_chars / 1e6:,.1f} MB of text")

    def close(self):
        self.bar.close()
