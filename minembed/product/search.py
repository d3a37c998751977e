"""Semantic search over a corpus: the documents nearest to a query by cosine similarity.

    index = CorpusIndex.build("model_dir", "corpus.txt")   # embeds the corpus (or loads the cache)
    for hit in index.search("sparse eigenvalue solver", k=5):
        print(hit.score, hit.label, hit.text)

The corpus embeddings (L2-normalised, float32) are cached next to the model as
``search-<corpus>-<fingerprint>.npy``. The fingerprint covers the corpus file
(absolute path, size, modification time, format) and the model (its
manifest.json, which holds the SHA-256 of the weights), so a changed corpus or
retrained model is embedded again and a second query on the same pair is
instant. The cache is written atomically and read with ``allow_pickle=False``;
a cache that does not match (shape, dtype, damaged) is silently rebuilt, and a
model directory that is not writable just means no cache.
"""
import dataclasses
import glob
import hashlib
import io
import os

import numpy as np

from .corpus import MAX_DOC_CHARS, Corpus
from ..errors import MinembedError
from .files import atomic_write_bytes
from .model import Model
from .modeldir import load

CACHE_PREFIX = "search-"


@dataclasses.dataclass
class Hit:
    rank: int      # 1 = nearest
    index: int     # the document's position in the corpus (0-based, file order)
    line: int      # the line of the file it is on (its first line: a paragraph), from 1
    score: float   # cosine similarity in [-1, 1]
    text: str
    label: str = None


def _model_identity(model):
    """The model's manifest (checksums of its files); for an unsaved model, its weights."""
    if model.path and os.path.isfile(os.path.join(model.path, "manifest.json")):
        with open(os.path.join(model.path, "manifest.json"), "rb") as f:
            return f.read()
    h = hashlib.sha256()
    for k in sorted(model.params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(np.asarray(model.params[k])).tobytes())
    return h.hexdigest().encode()


def cache_file(model, source):
    """Where the embeddings of the Corpus ``source`` under ``model`` are cached (None: nowhere)."""
    if not model.path:
        return None
    corpus_key = hashlib.sha1(str(source.identity["path"]).encode("utf-8")).hexdigest()[:10]
    fp = hashlib.sha1(source.key.encode("utf-8") + b"\0" + _model_identity(model)).hexdigest()[:16]
    return os.path.join(model.path, f"{CACHE_PREFIX}{corpus_key}-{fp}.npy")


def _load_cached(path, n, dim):
    try:
        X = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if X.dtype != np.float32 or X.shape != (n, dim):
        return None
    return X


def _store(path, X):
    """Write the cache atomically, replacing older versions for the same corpus file."""
    buf = io.BytesIO()
    np.save(buf, X, allow_pickle=False)
    try:
        atomic_write_bytes(path, buf.getvalue())
        stem = os.path.basename(path).rsplit("-", 1)[0]
        for old in glob.glob(os.path.join(os.path.dirname(path), stem + "-*.npy")):
            if old != path:
                os.unlink(old)
    except OSError:
        pass  # a read-only model directory: no cache, still correct


class CorpusIndex:
    """A corpus embedded by a model, ready to be searched."""

    def __init__(self, model, texts, labels, embeddings, lines=None):
        self.model, self.texts, self.labels = model, texts, labels
        self.lines = lines if lines is not None else list(range(1, len(texts) + 1))
        self.embeddings = embeddings  # (N, dim) float32, unit rows (zero rows stay zero)
        self.from_cache = False

    @classmethod
    def build(cls, model, corpus=None, fmt="auto", cache=True, batch_size=256, encoding="utf-8",
              errors="strict", max_doc_chars=MAX_DOC_CHARS):
        """Embed a corpus file (None: the built-in corpus) with a model (a Model or a
        model directory), reusing the cache next to the model when it is up to date."""
        if not isinstance(model, Model):
            model = load(model)
        source = Corpus(corpus, fmt, max_doc_chars, encoding=encoding, errors=errors)
        texts, labels, lines = source.read(with_lines=True)
        path = cache_file(model, source) if cache else None
        X = _load_cached(path, len(texts), model.dim) if path and os.path.isfile(path) else None
        hit = X is not None
        if X is None:
            X = model.encode(texts, batch_size=batch_size, normalize=True)
            if path:
                _store(path, X)
        index = cls(model, texts, labels, X, lines)
        index.from_cache = hit
        return index

    def search(self, query, k=10):
        """The k documents most similar to the query text (a list of Hit, best first)."""
        if not isinstance(query, str):
            raise MinembedError("the query must be a string")
        if not query.strip():
            raise MinembedError("the query is empty")
        if k < 1:
            raise MinembedError(f"k must be at least 1, got {k}")
        q = self.model.encode([query], normalize=True)[0]
        if not np.any(q):
            raise MinembedError("the query has no tokens the model knows (its embedding is zero)")
        scores = self.embeddings @ q  # (N,) cosine similarities
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]  # best first; ties in corpus order
        return [Hit(rank=r + 1, index=int(i), line=self.lines[i], score=float(scores[i]),
                    text=self.texts[i], label=None if self.labels is None else self.labels[i])
                for r, i in enumerate(top)]


def search(model, corpus, query, k=10, fmt="auto", cache=True):
    """One query: the k nearest documents of the corpus (see CorpusIndex)."""
    return CorpusIndex.build(model, corpus, fmt=fmt, cache=cache).search(query, k)
