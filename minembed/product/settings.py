"""The settings of a training run, each with its default, help and check in one place: the
CLI's ``minembed train`` options are made from these fields, their help from the values here.

    cfg = TrainConfig(model="bag", epochs=10).resolved()   # per-model defaults filled in, checked

The textbook (minembed/core) reads a config's fields and never imports this module.
"""
import dataclasses
import math

from ..errors import MinembedError

# Settings that differ per encoder (docs/quality.md). The bag model wants a huge lr (each row moves
# only when its token occurs) and a softer softmax (scale 10: same-topic documents are often each
# other's negatives), and is four narrower tables trained in turn (members: product/members.py).
MODEL_DEFAULTS = {
    "bag": dict(lr=0.1, batch_size=128, optimizer="adam", weight_decay=0.0, clip=0.0, dim=256,
                scale=10.0, members=4, tokens="words"),
    "transformer": dict(lr=5e-4, batch_size=64, optimizer="adamw", weight_decay=0.01, clip=1.0,
                        dim=128, scale=20.0, members=1, tokens="subwords"),
}
BAG_START_LR = 3e-5  # a transformer that starts as a bag model (product/warmstart.py) refines it
# no --epochs: (epochs, fewest steps, most steps) a run; members share them (auto_epochs)
AUTO_EPOCHS = {"bag": (40, 800, 5000), "transformer": (10, 400, 1500)}
VOCAB_SIZE = 16384


def auto_epochs(model, steps_per_epoch, members=1):
    """Epochs for AUTO_EPOCHS's number of epochs, kept within its range of steps; with several
    members each gets half of each (its table is narrower: 4 x 64 columns cost about what 256
    did)."""
    epochs, lo, hi = (n // (2 if members > 1 else 1) for n in AUTO_EPOCHS[model])
    spe = max(1, steps_per_epoch)
    return max(1, math.ceil(min(max(epochs * spe, lo), hi) / spe))


def _per_model(name, fmt=str):
    return "[" + ", ".join(f"{m}: {fmt(d[name])}" for m, d in MODEL_DEFAULTS.items()) + "]"


def _epochs_help():
    (e, lo, hi), (te, tlo, thi) = AUTO_EPOCHS["bag"], AUTO_EPOCHS["transformer"]
    return (f"passes over the corpus, a member's [bag: {e // 2} ({lo // 2:,}-{hi // 2:,} steps; "
            f"one member: {e}, {lo:,}-{hi:,}), transformer: {te} ({tlo:,}-{thi:,} steps)]")


def _f(default, help, check=None, must=None, choices=None):
    """A setting: its default, --help text and check (the CLI's options come from these)."""
    return dataclasses.field(default=default,
                             metadata=dict(help=help, check=check, must=must, choices=choices))


POS, NONNEG, NUMBER = (lambda v: v > 0, "positive"), (lambda v: v >= 0, ">= 0"), \
    (lambda v: 0 < v < math.inf, "a positive number")
FRAC, UNIT, OPEN = (lambda v: 0 <= v <= 1, "in [0, 1]"), (lambda v: 0 < v <= 1, "in (0, 1]"), \
    (lambda v: 0 < v < 1, "in (0, 1)")
SEED = (lambda v: 0 <= v < 2 ** 63, "from 0 to 2^63 - 1")


def at_least(n): return (lambda v: v >= n), f"at least {n}"  # noqa: E704


@dataclasses.dataclass
class TrainConfig:
    model: str = _f("bag", "bag of token embeddings (mean pooled) or a small transformer",
                    choices=("bag", "transformer"))
    dim: int = _f(None, f"embedding dimension {_per_model('dim')}", *POS)
    epochs: int = _f(None, _epochs_help(), *POS)
    max_steps: int = _f(0, "stop after this many steps a member (the schedule ends there too); 0: "
                           "all epochs", *NONNEG)
    batch_size: int = _f(None, f"positive pairs per step {_per_model('batch_size')}", *at_least(2))
    lr: float = _f(None, f"peak learning rate {_per_model('lr', '{:g}'.format)[:-1]}; "
                         f"{BAG_START_LR:g} for a transformer started as a bag model]", *NUMBER)
    warmup: float = _f(0.1, "linear warm-up, a fraction of the first epoch; then linear decay "
                            "to 0", *FRAC)
    optimizer: str = _f(None, _per_model("optimizer"), choices=("adam", "adamw"))
    weight_decay: float = _f(None, "AdamW decoupled weight decay "
                                   f"{_per_model('weight_decay', '{:g}'.format)}", *NONNEG)
    lazy: bool = _f(True, "Adam on the embedding rows a batch used (lazy) or on every row (dense)")
    clip: float = _f(None, "clip the global gradient norm (0: off) "
                           f"{_per_model('clip', '{:g}'.format)}", *NONNEG)
    scale: float = _f(None, "cosine similarity scale = 1/temperature "
                            f"{_per_model('scale', '{:g}'.format)}", *NUMBER)
    symmetric: bool = _f(False, "InfoNCE in both directions (anchors<->positives)")
    matryoshka: str = _f(None, "Matryoshka: also train these prefix dimensions as embeddings, e.g. "
                               "32,64,128 (the loss is the mean of InfoNCE over them and --dim)")
    seed: int = _f(0, "same seed, same model", *SEED)
    vocab_size: int = _f(VOCAB_SIZE, "vocabulary of the tokenizer trained on the corpus",
                         *at_least(64))
    tokens: str = _f(None, "the tokenizer trained on the corpus: words (lower-cased words and "
                           "punctuation seen twice or more; the rest is [UNK], which weighs "
                           "nothing in a bag model) or subwords (BPE: every word is pieces) "
                           f"{_per_model('tokens')}", choices=("words", "subwords"))
    crops: str = _f("auto",
                    "sentence crops, token spans, or auto: sentence crops where a document has two",
                    choices=("auto", "sentences", "spans"))
    crop_sentences: int = _f(2, "consecutive sentences per crop", *POS)
    sentence_min: int = _f(100, "shortest kept sentence (characters)", *NONNEG)
    sentence_max: int = _f(250, "longest kept sentence (characters)", *POS)
    span_min: float = _f(0.05, "shortest token span, a fraction of the document", *UNIT)
    span_max: float = _f(0.2, "longest token span, a fraction of the document", *UNIT)
    positives: str = _f("rest", "a crop and the rest of its document; two crops (the paper's); one "
                                "crop twice with dropout (SimCSE, transformer only); crops with "
                                "masked tokens",
                        choices=("rest", "crops", "dropout", "mask"))
    mask_frac: float = _f(0.3, "fraction of tokens masked with --positives mask", *OPEN)
    layers: int = _f(2, "transformer blocks", *POS)
    heads: int = _f(4, "attention heads", *POS)
    ffn: int = _f(512, "feed-forward width", *POS)
    max_len: int = _f(64, "transformer: longest view in tokens (longer ones are cut)", *at_least(2))
    dropout: float = _f(0.1, "transformer dropout", lambda v: 0 <= v < 1, "in [0, 1)")
    pooling: str = _f("mean", "bag: a token n times in a text weighs n (mean) or 1 + log n "
                              "(sublinear, as in TF-IDF) when encoding; training counts n",
                      choices=("mean", "sublinear"))
    members: int = _f(None, "bag: K tables of dim/K trained in turn (seeds seed, seed+1, ...), "
                            f"side by side [{MODEL_DEFAULTS['bag']['members']}]", *POS)
    held_out: bool = _f(True, "keep a few documents out of training (2 %, at most 500; none "
                              "under 2,500) and score the model on them at the end")
    bag_init: bool = _f(True, "transformer: token table from a bag model trained first (not for "
                              "dropout positives)")

    def resolved(self):
        """A copy with the per-model defaults filled in, checked (MinembedError naming the
        option)."""
        c = dataclasses.replace(self, **{k: v for k, v in self._defaults().items()
                                         if getattr(self, k) is None})
        for f in dataclasses.fields(c):
            v, m = getattr(c, f.name), f.metadata
            flag = "--" + f.name.replace("_", "-")
            if m["choices"] and v not in m["choices"]:
                raise MinembedError(f"{flag} must be one of {', '.join(m['choices'])}, got {v!r}")
            if v is not None and m["check"] and not m["check"](v):
                raise MinembedError(f"{flag} must be {m['must']}, got {v}")
        if c.matryoshka is not None:  # normalised: "128,32" -> "32,128,256"
            c.matryoshka = ",".join(map(str, matryoshka_dims(c.matryoshka, c.dim)))
        for ok, msg in c._rules():
            if not ok:
                raise MinembedError(msg)
        return c

    def _defaults(self):
        bag_start = self.model == "transformer" and self.bag_init and self.positives != "dropout"
        d = dict(MODEL_DEFAULTS.get(self.model, {}), **({"lr": BAG_START_LR} if bag_start else {}))
        return dict(d, members=1) if self.matryoshka is not None else d

    def _rules(self):
        """(holds, the message when it does not) for the settings that constrain each other."""
        return ((self.span_min <= self.span_max, "--span-min must not exceed --span-max"),
                (self.sentence_min <= self.sentence_max,
                 "--sentence-min must not exceed --sentence-max"),
                (self.model == "bag" or self.pooling == "mean",
                 "--pooling sublinear is for the bag model"),
                (self.members == 1 or self.model == "bag" and not self.matryoshka,
                 "--members is for the bag model (and not with --matryoshka)"),
                (self.dim % self.members == 0,
                 f"--dim {self.dim} is not a multiple of --members {self.members}"),
                (self.model == "bag" or self.dim % self.heads == 0,
                 f"--dim ({self.dim}) must be a multiple of --heads ({self.heads})"),
                (self.positives != "dropout" or (self.model == "transformer" and self.dropout > 0),
                 "--positives dropout needs an encoder with dropout (--model transformer, "
                 "--dropout > 0)"))

    def encoder_config(self, vocab_size):
        """The hyper-parameters an encoder needs (stored in config.json)."""
        # encode(): unit vectors
        cfg = {"model": self.model, "vocab_size": int(vocab_size), "dim": self.dim,
               "normalize": True, **({"pooling": self.pooling} if self.pooling != "mean" else {})}
        if self.matryoshka:
            cfg["matryoshka"] = matryoshka_dims(self.matryoshka, self.dim)
        if self.model == "transformer":
            cfg.update(layers=self.layers, heads=self.heads, ffn=self.ffn, max_len=self.max_len,
                       dropout=self.dropout)
        return cfg


def matryoshka_dims(spec, dim):
    """"32,64,128" -> [32, 64, 128, dim]: ascending, distinct, the full dimension last."""
    ks = str(spec).replace(" ", "").split(",")
    dims = sorted({int(k) for k in ks if k} | {dim}) if all(k.isdigit() for k in ks if k) else [0]
    if dims[0] < 1 or dims[-1] > dim:
        raise MinembedError(f"--matryoshka must be a comma-separated list of dimensions from 1 to "
                            f"--dim ({dim}), e.g. 32,64,128; got {spec!r}")
    return dims
