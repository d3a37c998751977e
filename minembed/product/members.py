"""``--members K`` (the bag model; 4 by default): a run trains K tables of dim / K columns one
after another, member k exactly the run with seed + k, and keeps them side by side as one
(V, dim) table, a bag model of dim dimensions (an ensemble of bag models is a bag model; four
tables of 64 beat one of 256 at the same cost: docs/quality.md). Steps, the log and checkpoints
count through the members; a member starts with fresh Adam moments. With K = 1 it is the run.
Member k keeps out of training the documents the run of seed + k would (product/quality.py):
each document is trained on by the other members.
"""
import dataclasses

from ..core.train import train_loop


class Members:
    """The run's weights ``params`` and Adam state ``adam`` (whole tables), trained a member at a
    time: member k trains copies of its columns (``current``, ``current_adam``; the arrays
    themselves when K = 1), which ``sync()`` puts back."""

    def __init__(self, params, adam, members, steps, xp, usable=None):
        self.params, self.adam, self.K, self.T, self.xp = params, adam, members, steps, xp
        self.usable = usable  # the documents member k trains on: usable[k] (or usable[0] for all)
        self.width = params["tok_emb"].shape[1] // members
        self.k, self.current, self.current_adam = 0, params, adam

    def train(self, encoder, sampler, cfg, enc_cfg, start, hook, step_fn=None, ahead=None):
        """Train the members from the run's step ``start`` on (a member's steps: T each)."""
        member_cfg = dict(enc_cfg, dim=self.width)
        for k in range(min(start // self.T, self.K - 1), self.K):
            first = max(0, start - k * self.T)          # steps this member has done already
            self._begin(k, first)
            hook.offset, hook.member = k * self.T, k
            if self.usable is not None:  # (as many for each: the same steps an epoch)
                sampler.usable = self.usable[min(k, len(self.usable) - 1)]
            train_loop(encoder, self.current, self.current_adam, sampler,
                       dataclasses.replace(cfg, seed=cfg.seed + k), member_cfg, self.T, first,
                       hook, step_fn, ahead)
            self.sync()

    def _begin(self, k, first):
        self.k = k
        if self.K > 1:  # its columns; fresh moments (zeros in its columns until it trains)
            cols, xp = self._columns(), self.xp
            self.current = {"tok_emb": xp.ascontiguousarray(self.params["tok_emb"][:, cols])}
            self.current_adam = {"step": self.adam["step"] if first else 0, **{
                mv: {"tok_emb": xp.ascontiguousarray(self.adam[mv]["tok_emb"][:, cols])}
                for mv in "mv"}}

    def _columns(self):
        return slice(self.k * self.width, (self.k + 1) * self.width)

    def sync(self):
        """The member's weights and moments into its columns of the run's arrays."""
        if self.K > 1:
            cols = self._columns()
            for arrays, new in ((self.params, self.current),
                                (self.adam["m"], self.current_adam["m"]),
                                (self.adam["v"], self.current_adam["v"])):
                arrays["tok_emb"][:, cols] = new["tok_emb"]
            self.adam["step"] = self.current_adam["step"]
