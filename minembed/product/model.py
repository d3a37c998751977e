"""The Python API to a model: ``Model.encode(texts)`` gives one float32 vector per text.

    model = minembed.load("model_dir")        # product/modeldir.py reads the directory
    X = model.encode(["a text", "another"])   # (2, dim), unit rows

``initial_params`` and ``untrained`` are the weights a run starts from: the baseline a trained
model is measured against (minembed eval's "untrained" row).
"""
import numbers
import warnings

import numpy as np

from ..core.backend import to_device, to_numpy, xp_of
from ..core.pairs import gather_ranges
from ..errors import MinembedError
from .runtime import tuned
from .tokenize import encode_texts, is_word_level

TOKENIZE_CHUNK = 8192  # texts per call of the tokenizer in encode()


def encoder_module(name):
    """The module implementing an encoder (the interface in docs/DESIGN.md)."""
    if name == "bag":
        from ..core import bag
        return bag
    if name == "transformer":
        from ..core import transformer
        return transformer
    raise MinembedError(f"unknown model type {name!r} (expected bag or transformer)")


def initial_params(config, seed=0, members=1):
    """The weights a run with this encoder ``config`` and ``seed`` starts from (--members K:
    member k's columns from the Generator [seed + k, 0]), as NumPy arrays."""
    encoder, width = encoder_module(config["model"]), config["dim"] // members
    inits = [encoder.init_params(dict(config, dim=width), np.random.default_rng([seed + k, 0]))
             for k in range(members)]
    return {n: np.concatenate([p[n] for p in inits], axis=1) if members > 1 else v
            for n, v in inits[0].items()}


def untrained(model):
    """The model as its training run started: random weights, same tokenizer and config."""
    training = model.config.get("training", {})
    params = initial_params(model.config, training.get("seed", 0), training.get("members", 1))
    xp = xp_of(*model.params.values())
    params = unknown_weighs_nothing({k: to_device(v, xp) for k, v in params.items()},
                                    model.config, model.tokenizer)
    return Model(model.config, params, model.tokenizer)


def unknown_weighs_nothing(params, config, tok):
    """``params`` with the [UNK] row of a bag model of words set to zeros (in place): a word seen
    fewer than twice in the training corpus adds nothing to a text's vector (a TF-IDF of min_df
    2 drops it too), where one shared random or trained row would pull unrelated texts together."""
    unk = tok.token_to_id("[UNK]")
    if config["model"] == "bag" and unk is not None and is_word_level(tok):
        params["tok_emb"][unk] = 0
    return params


class Model:
    """A trained (or freshly initialised) encoder with its tokenizer.

    ``encode(texts)`` gives one float32 vector per text; that is the whole API.
    """

    def __init__(self, config, params, tokenizer, path=None):
        self.config, self.params, self.tokenizer, self.path = config, params, tokenizer, path
        self.encoder = encoder_module(config["model"])

    @property
    def dim(self):
        return int(self.config["dim"])

    def check_dim(self, dim):
        """``dim`` (None: the model's) as an int, or a MinembedError; a warning when the
        model was not trained for vectors cut to that many dimensions (--matryoshka)."""
        if dim is None:
            return self.dim
        if (not isinstance(dim, numbers.Integral) or isinstance(dim, bool)
                or not 0 < dim <= self.dim):
            raise MinembedError(f"dim must be an integer from 1 to {self.dim} (the model's "
                                f"dimension), got {dim!r}")
        trained = self.config.get("matryoshka", [self.dim])
        if dim not in trained:
            warnings.warn(f"this model was trained at dimension{'s' * (len(trained) > 1)} "
                          f"{', '.join(map(str, trained))}, not {dim} (train with --matryoshka "
                          f"{dim}); its vectors cut to {dim} dimensions may be much worse",
                          stacklevel=3)
        return int(dim)

    def encode(self, texts, batch_size=256, normalize=None, progress=None, dim=None, threads=None):
        """Embed texts: float32 array (N, dim); a single string gives one vector (dim,).
        Texts are processed in batches of similar length (sorted by length, then
        restored to the input order). An empty text gives a zero vector.

        ``normalize`` scales rows to unit length. The default (None) follows the
        model's config, which is True for trained models: training compares
        vectors by cosine similarity only, so their direction is what was learned
        and their length is noise (for the bag model, kNN with Euclidean distance
        on raw means is 6-12 points worse than on unit vectors).
        ``dim=k`` keeps the first k dimensions (then normalises): a model trained
        with ``--matryoshka`` has those prefixes trained as embeddings on their own.
        ``progress(n)`` is called with the number of texts of each batch done.
        ``threads``: BLAS threads (None: MINEMBED_THREADS, else chosen: product/runtime.py)."""
        if isinstance(texts, str):
            return self.encode([texts], batch_size, normalize, dim=dim, threads=threads)[0]
        texts = _texts(texts)
        normalize, k = self._checked(batch_size, threads, normalize, dim)
        out = np.zeros((len(texts), k), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        # the tokenizer's threads want big batches (256 texts: 0.75x the speed of 8,192)
        chunk = max(batch_size, TOKENIZE_CHUNK)
        with tuned(self.config["model"], threads):
            for c in range(0, len(texts), chunk):
                ids, offsets = _tokens(self.tokenizer, texts, order[c:c + chunk])
                self._embed(ids, offsets, order[c:c + chunk], out, batch_size, normalize, progress)
        return out

    def encode_ids(self, ids, offsets, batch_size=256, normalize=None, dim=None, threads=None):
        """``encode`` of texts already tokenised: ids (M,), offsets (N+1,), text i =
        ids[offsets[i]:offsets[i+1]] (tokenize.encode_texts), for a caller that needs the tokens
        too (the server counts them). Views are batched by their length in tokens."""
        normalize, k = self._checked(batch_size, threads, normalize, dim)
        ids, offsets = np.asarray(ids), np.asarray(offsets, dtype=np.int64)
        lengths = np.diff(offsets)
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(lengths), k), dtype=np.float32)
        with tuned(self.config["model"], threads):
            self._embed(ids[gather_ranges(offsets[order], lengths[order])],
                        np.r_[0, np.cumsum(lengths[order])], order, out, batch_size, normalize)
        return out

    def _checked(self, batch_size, threads, normalize, dim):
        """(normalize, k): the options of encode, checked, with the model's defaults."""
        for name, v in (("batch_size", batch_size), ("threads", threads)):
            if not (v is None and name == "threads" or isinstance(v, numbers.Integral)
                    and not isinstance(v, bool) and v >= 1):
                raise MinembedError(f"{name} must be a positive integer, got {v!r}")
        return bool(self.config.get("normalize", True)) if normalize is None else normalize, \
            self.check_dim(dim)

    def _embed(self, ids, offsets, rows, out, batch_size, normalize, progress=None):
        """The vectors of the ragged views (ids, offsets) into out[rows], batch_size at a time."""
        xp, k = xp_of(*self.params.values()), out.shape[1]
        for b in range(0, len(offsets) - 1, batch_size):
            o = offsets[b:b + batch_size + 1]
            emb = to_numpy(self.encoder.encode(self.params, to_device(ids[o[0]:o[-1]], xp),
                                               to_device(o - o[0], xp), self.config))[:, :k]
            if normalize:  # while the batch is in cache
                emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            out[rows[b:b + len(o) - 1]] = emb
            if progress is not None:
                progress(len(o) - 1)

def _texts(texts):
    """A list of strings, or a MinembedError that says what ``texts`` holds instead."""
    if texts is None or isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise MinembedError(f"encode() takes a string or a list of strings, got "
                            f"{type(texts).__name__}")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        hint = " (decode it first: b.decode('utf-8'))" if isinstance(texts[bad], bytes) else ""
        raise MinembedError(f"encode(): text {bad} is a {type(texts[bad]).__name__}, not a "
                            f"string{hint}")
    return texts


def _tokens(tokenizer, texts, which):
    """encode_texts of texts[i] for i in ``which``; a MinembedError naming a text the tokenizer
    cannot take (a lone surrogate, \\ud800-\\udfff, is no character)."""
    try:
        return encode_texts(tokenizer, [texts[i] for i in which])
    except Exception:
        for i in which:
            try:
                texts[i].encode("utf-8")
            except UnicodeEncodeError as e:
                raise MinembedError(f"encode(): text {i} holds a lone surrogate "
                                    f"({texts[i][e.start]!r} at {e.start}), which is not a "
                                    f"character") from None
        raise
