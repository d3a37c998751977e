"""Training: the settings, one step, and the loop.

    for step in start+1 .. total:
        docs   <- the next B documents of this epoch's permutation
        views  <- sampler.sample(docs)          2B ragged views: anchors, then positives
        emb    <- encoder.forward(views)        (2B, D)
        loss   <- InfoNCE(emb[:B], emb[B:])    (--matryoshka: its mean over prefix dims)
        grads  <- encoder.backward(InfoNCE backward)
        clip the gradient norm; lr: linear warm-up, then linear decay to 0; Adam
        on_step(...)                            log, progress, checkpoints: the caller's

Every random draw is a function of (seed, purpose, epoch or step): the same seed gives the same
model bit for bit, and a run resumed at step k continues exactly as if it had never stopped. The
model directory, checkpoints, Ctrl-C and progress are the product's (minembed/run.py).
"""
import dataclasses
import math
import time

import numpy as np

from . import optim
from .backend import to_device, xp_of
from ..errors import MinembedError
from .loss import matryoshka_backward, matryoshka_forward

# Settings that differ per encoder (docs/quality.md). The bag model wants a huge lr (each row moves
# only when its token occurs) and a softer softmax (scale 10: same-topic documents are often each
# other's negatives); a transformer that starts as a bag model (run.py) a tiny lr, 3e-5, to refine it.
MODEL_DEFAULTS = {
    "bag": dict(lr=0.1, batch_size=128, optimizer="adam", weight_decay=0.0, clip=0.0, dim=256, scale=10.0),
    "transformer": dict(lr=5e-4, batch_size=64, optimizer="adamw", weight_decay=0.01, clip=1.0, dim=128, scale=20.0),
}


def _f(default, help, check=None, must=None, choices=None):
    """A setting: its default, --help text and check, in one place (the CLI's options come from these)."""
    return dataclasses.field(default=default, metadata=dict(help=help, check=check, must=must, choices=choices))


POS, NONNEG, NUMBER = (lambda v: v > 0, "positive"), (lambda v: v >= 0, ">= 0"), \
    (lambda v: 0 < v < math.inf, "a positive number")
FRAC, UNIT, OPEN = (lambda v: 0 <= v <= 1, "in [0, 1]"), (lambda v: 0 < v <= 1, "in (0, 1]"), \
    (lambda v: 0 < v < 1, "in (0, 1)")


def at_least(n): return (lambda v: v >= n), f"at least {n}"  # noqa: E704


@dataclasses.dataclass
class TrainConfig:
    model: str = _f("bag", "bag of token embeddings (mean pooled) or a small transformer", choices=("bag", "transformer"))
    dim: int = _f(None, "embedding dimension [bag: 256, transformer: 128]", *POS)
    epochs: int = _f(None, "passes over the corpus, a member's [bag: 20 (400-2,500 steps; one member: 40, "
                           "800-5,000), transformer: 10 (400-1,500 steps)]", *POS)
    max_steps: int = _f(0, "stop after this many steps a member (the schedule ends there too); 0: all epochs", *NONNEG)
    batch_size: int = _f(None, "positive pairs per step [bag: 128, transformer: 64]", *at_least(2))
    lr: float = _f(None, "peak learning rate [bag: 0.1, transformer: 3e-5 on a bag table, else 5e-4]", *NUMBER)
    warmup: float = _f(0.1, "linear warm-up, a fraction of the first epoch; then linear decay to 0", *FRAC)
    optimizer: str = _f(None, "[bag: adam, transformer: adamw]", choices=("adam", "adamw"))
    weight_decay: float = _f(None, "AdamW decoupled weight decay [0.01]", *NONNEG)
    lazy: bool = _f(True, "Adam on the embedding rows a batch used (lazy) or on every row (dense)")
    clip: float = _f(None, "clip the global gradient norm (0: off) [bag: 0, transformer: 1]", *NONNEG)
    scale: float = _f(None, "cosine similarity scale = 1/temperature [bag: 10, transformer: 20]", *NUMBER)
    symmetric: bool = _f(False, "InfoNCE in both directions (anchors<->positives)")
    matryoshka: str = _f(None, "Matryoshka: also train these prefix dimensions as embeddings, e.g. "
                               "32,64,128 (the loss is the mean of InfoNCE over them and --dim)")
    seed: int = _f(0, "same seed, same model")
    vocab_size: int = _f(16384, "vocabulary of the tokenizer trained on the corpus", *at_least(64))
    crops: str = _f("auto", "sentence crops, token spans, or auto: sentence crops where a document has two",
                    choices=("auto", "sentences", "spans"))
    crop_sentences: int = _f(2, "consecutive sentences per crop", *POS)
    sentence_min: int = _f(100, "shortest kept sentence (characters)", *NONNEG)
    sentence_max: int = _f(250, "longest kept sentence (characters)", *POS)
    span_min: float = _f(0.1, "shortest token span, a fraction of the document", *UNIT)
    span_max: float = _f(0.3, "longest token span, a fraction of the document", *UNIT)
    positives: str = _f("rest", "a crop and the rest of its document; two crops (the paper's); one crop twice "
                                "with dropout (SimCSE, transformer only); crops with masked tokens",
                        choices=("rest", "crops", "dropout", "mask"))
    mask_frac: float = _f(0.3, "fraction of tokens masked with --positives mask", *OPEN)
    layers: int = _f(2, "transformer blocks", *POS)
    heads: int = _f(4, "attention heads", *POS)
    ffn: int = _f(512, "feed-forward width", *POS)
    max_len: int = _f(64, "transformer: longest view in tokens (longer ones are cut)", *at_least(2))
    dropout: float = _f(0.1, "transformer dropout", lambda v: 0 <= v < 1, "in [0, 1)")
    pooling: str = _f("mean", "bag: a token n times in a text weighs n (mean) or 1 + log n (sublinear, as in TF-IDF) "
                              "when encoding; training counts n", choices=("mean", "sublinear"))
    members: int = _f(None, "bag: K tables of dim/K trained in turn (seeds seed, seed+1, ...), side by side [4]", *POS)
    bag_init: bool = _f(True, "transformer: token table from a bag model trained first (not for dropout positives)")

    def resolved(self):
        """A copy with the per-model defaults filled in, checked (MinembedError naming the option)."""
        bag_start = self.model == "transformer" and self.bag_init and self.positives != "dropout"
        defaults = dict(MODEL_DEFAULTS.get(self.model, {}), **({"lr": 3e-5} if bag_start else {}),
                        members=4 if self.model == "bag" and self.matryoshka is None else 1)  # run.py
        c = dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        for f in dataclasses.fields(c):
            v, m = getattr(c, f.name), f.metadata
            flag = "--" + f.name.replace("_", "-")
            if m["choices"] and v not in m["choices"]:
                raise MinembedError(f"{flag} must be one of {', '.join(m['choices'])}, got {v!r}")
            if v is not None and m["check"] and not m["check"](v):
                raise MinembedError(f"{flag} must be {m['must']}, got {v}")
        if c.matryoshka is not None:  # normalised: "128,32" -> "32,128,256"
            c.matryoshka = ",".join(map(str, matryoshka_dims(c.matryoshka, c.dim)))
        for ok, msg in ((c.span_min <= c.span_max, "--span-min must not exceed --span-max"),
                        (c.sentence_min <= c.sentence_max, "--sentence-min must not exceed --sentence-max"),
                        (c.model == "bag" or c.pooling == "mean", "--pooling sublinear is for the bag model"),
                        (c.members == 1 or c.model == "bag" and not c.matryoshka,
                         "--members is for the bag model (and not with --matryoshka)"),
                        (c.dim % c.members == 0, f"--dim {c.dim} is not a multiple of --members {c.members}"),
                        (c.model == "bag" or c.dim % c.heads == 0,
                         f"--dim ({c.dim}) must be a multiple of --heads ({c.heads})"),
                        (c.positives != "dropout" or (c.model == "transformer" and c.dropout > 0),
                         "--positives dropout needs an encoder with dropout (--model transformer, --dropout > 0)")):
            if not ok:
                raise MinembedError(msg)
        return c

    def encoder_config(self, vocab_size):
        """The hyper-parameters an encoder needs (stored in config.json)."""
        cfg = {"model": self.model, "vocab_size": int(vocab_size), "dim": self.dim,  # encode(): unit vectors
               "normalize": True, **({"pooling": self.pooling} if self.pooling != "mean" else {})}
        if self.matryoshka:
            cfg["matryoshka"] = matryoshka_dims(self.matryoshka, self.dim)
        if self.model == "transformer":
            cfg.update(layers=self.layers, heads=self.heads, ffn=self.ffn, max_len=self.max_len, dropout=self.dropout)
        return cfg


def matryoshka_dims(spec, dim):
    """"32,64,128" -> [32, 64, 128, dim]: ascending, distinct, the full dimension last."""
    ks = str(spec).replace(" ", "").split(",")
    dims = sorted({int(k) for k in ks if k} | {dim}) if all(k.isdigit() for k in ks if k) else [0]
    if dims[0] < 1 or dims[-1] > dim:
        raise MinembedError(f"--matryoshka must be a comma-separated list of dimensions from 1 to "
                            f"--dim ({dim}), e.g. 32,64,128; got {spec!r}")
    return dims


class Diverged(Exception):
    """The loss or the gradient norm is not finite; the weights are those of the step before."""


def train_step(encoder, params, enc_cfg, ids, offsets, cfg, rng):
    """Forward and backward of one batch of pairs: (loss, accuracy, grads)."""
    emb, cache = encoder.forward(params, ids, offsets, enc_cfg, train=True, rng=rng)
    b = emb.shape[0] // 2
    dims = matryoshka_dims(cfg.matryoshka or "", emb.shape[1])  # [D], or the Matryoshka prefixes too
    loss, lcache = matryoshka_forward(emb[:b], emb[b:], dims, cfg.scale, cfg.symmetric)
    demb = xp_of(emb).concatenate(matryoshka_backward(1.0, lcache))  # (da; dp): the rows of emb
    return loss, lcache["accuracy"], encoder.backward(demb, cache)


def train_loop(encoder, params, adam, sampler, cfg, enc_cfg, total, start=0, on_step=None, step_fn=None):
    """Steps start+1 .. total of the run ``cfg`` (resolved, epochs set) on ``sampler``'s
    pairs, updating ``params`` and the Adam state ``adam`` in place; ``on_step(step,
    record)`` after each (loss, in-batch accuracy, lr, gradient norm, epoch, seconds).
    ``step_fn``: one like train_step, instead of it (many processes: minembed/distributed.py)."""
    xp = xp_of(*params.values())
    spe = len(sampler.usable) // cfg.batch_size             # steps per epoch
    warmup = int(round(cfg.warmup * spe))
    wd = cfg.weight_decay if cfg.optimizer == "adamw" else 0.0
    epoch = order = None
    for step in range(start + 1, total + 1):
        e, i = divmod(step - 1, spe)
        if e != epoch:                                      # this epoch's document order
            epoch, order = e, np.random.default_rng([cfg.seed, 1, e]).permutation(sampler.usable)
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, 2, step])    # crops, masks, dropout of this step
        ids, offsets = sampler.sample(order[i * cfg.batch_size:(i + 1) * cfg.batch_size], rng)
        loss, acc, grads = (step_fn or train_step)(encoder, params, enc_cfg, to_device(ids, xp),
                                                   to_device(offsets, xp), cfg, rng)
        gnorm = optim.clip_grads(grads, cfg.clip)
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            raise Diverged(f"training diverged: the loss became {loss} at step {step}")
        lr = optim.lr_at(step, total, warmup, cfg.lr)
        optim.adam_step(params, grads, adam, lr, weight_decay=wd, lazy=cfg.lazy)
        if on_step is not None:
            on_step(step, {"epoch": e + 1, "loss": loss, "acc": acc, "lr": lr, "grad_norm": gnorm,
                           "seconds": time.perf_counter() - t0})
