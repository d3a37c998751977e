"""Training: the loop, and one step.

    for step in start+1 .. total:
        docs   <- the next B documents of this epoch's permutation
        views  <- sampler.sample(docs)          2B ragged views: anchors, then positives
        emb    <- encoder.forward(views)        (2B, D)
        loss   <- InfoNCE(emb[:B], emb[B:])    (--matryoshka: its mean over prefix dims)
        grads  <- encoder.backward(d loss / d emb)
        clip the gradient norm; lr: linear warm-up, then linear decay to 0; Adam
        on_step(...)                            log, progress, checkpoints: the caller's

The first two lines are ``batches``, a generator (on a GPU it runs ahead on a thread:
minembed/fast/prefetch.py). ``cfg`` is a run's settings (a TrainConfig,
minembed/product/settings.py: batch_size, lr, warmup, optimizer, weight_decay, lazy, clip, scale,
symmetric, matryoshka, seed). Every random draw is a
function of (seed, purpose, epoch or step): the same seed gives the same model bit for bit, and
a run resumed at step k continues exactly as if it had never stopped.
"""
import contextlib
import math
import time

import numpy as np

from . import optim
from .backend import to_device, xp_of
from .loss import contrastive_loss


def train_loop(encoder, params, adam, sampler, cfg, enc_cfg, total, start=0, on_step=None,
               step_fn=None, ahead=None):
    """Steps start+1 .. total on ``sampler``'s pairs, updating ``params`` and the Adam state
    ``adam`` in place; ``on_step(step, record)`` after each (loss, in-batch accuracy, lr,
    gradient norm, epoch, seconds). ``step_fn``: one like train_step, instead of it (a step
    encoded in parts: minembed/product/gradcache.py). ``ahead``: a wrapper of the batches'
    iterator that draws them ahead (minembed/fast/prefetch.py: the same batches, on a thread)."""
    xp = xp_of(*params.values())
    warmup = int(round(cfg.warmup * sampler.steps_per_epoch(cfg.batch_size)))
    wd = cfg.weight_decay if cfg.optimizer == "adamw" else 0.0
    feed = batches(sampler, cfg, start, total)
    with contextlib.closing(ahead(feed) if ahead else feed) as feed:  # stopped with the loop
        t0 = time.perf_counter()
        for step, e, ids, offsets, rng in feed:
            loss, acc, grads = (step_fn or train_step)(encoder, params, enc_cfg,
                                                       to_device(ids, xp), to_device(offsets, xp),
                                                       cfg, rng)
            gnorm = optim.clip_grads(grads, cfg.clip)
            if not (math.isfinite(loss) and math.isfinite(gnorm)):
                raise Diverged(f"training diverged: the loss became {loss} at step {step}")
            lr = optim.lr_at(step, total, warmup, cfg.lr)
            optim.adam_step(params, grads, adam, lr, weight_decay=wd, lazy=cfg.lazy)
            if on_step is not None:
                on_step(step, {"epoch": e + 1, "loss": loss, "acc": acc, "lr": lr,
                               "grad_norm": gnorm, "seconds": time.perf_counter() - t0})
            t0 = time.perf_counter()


def batches(sampler, cfg, start, total):
    """(step, epoch, ids, offsets, rng) for steps start+1 .. total: each step's pairs, and the
    random generator that drew them, which the step goes on using (dropout)."""
    spe = sampler.steps_per_epoch(cfg.batch_size)
    epoch = order = None
    for step in range(start + 1, total + 1):
        e, i = divmod(step - 1, spe)
        if e != epoch:                                      # this epoch's document order
            epoch, order = e, np.random.default_rng([cfg.seed, 1, e]).permutation(sampler.usable)
        rng = np.random.default_rng([cfg.seed, 2, step])    # crops, masks, dropout of this step
        ids, offsets = sampler.sample(order[i * cfg.batch_size:(i + 1) * cfg.batch_size], rng)
        yield step, e, ids, offsets, rng


def train_step(encoder, params, enc_cfg, ids, offsets, cfg, rng):
    """Forward and backward of one batch of pairs: (loss, accuracy, grads)."""
    emb, cache = encoder.forward(params, ids, offsets, enc_cfg, train=True, rng=rng)
    loss, accuracy, demb = contrastive_loss(emb, cfg.scale, cfg.symmetric, loss_dims(cfg))
    return loss, accuracy, encoder.backward(demb, cache)


def loss_dims(cfg):
    """The prefix dimensions of a Matryoshka run (cfg.matryoshka "32,64,256"), else None."""
    return [int(k) for k in cfg.matryoshka.split(",")] if cfg.matryoshka else None


class Diverged(Exception):
    """The loss or the gradient norm is not finite; the weights are those of the step before."""
