"""Positive pairs: two views of one document.

* Sentence crops (the paper's): keep the sentences of ``sent_min``..``sent_max``
  characters; a crop is ``n_sent`` consecutive kept sentences (a sliding window,
  stride one sentence); a pair is two *different* crops of one document,
  re-drawn every epoch. A document needs at least 2 windows.
* Token spans (Contriever's): two independent random spans of the document,
  each ``span_min``..``span_max`` of its tokens.
* Documents with too few kept sentences fall back to token spans (with
  ``crops="auto"``, the default); documents with fewer than 2 tokens are skipped.
  ``stats`` reports how many documents each kind used.

Every view is built as a list of token ranges in the flat id array and
gathered with one vectorised index computation (``_gather_ranges``): no
Python loop over documents or tokens.

Positive kinds (``positives``): ``crops`` (two crops), ``dropout`` (one crop
twice, for encoders with dropout: SimCSE), ``mask`` (two crops, then a fraction
``mask_frac`` of each view's tokens replaced by the mask token).
"""
import dataclasses

import numpy as np

from .errors import MinembedError
from .train import TrainConfig


def _gather_ranges(starts, lengths):
    """Indices of the concatenated ranges [starts[i], starts[i] + lengths[i]).

    idx = repeat(starts - (cumulative length before range i), lengths) + arange(total)
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(total)


class PairSampler:
    """Draws batches of positive pairs from a TokenizedCorpus, as the settings say:
    ``cfg`` (a TrainConfig; default TrainConfig()) with ``settings`` overriding its
    fields, e.g. PairSampler(data, crops="spans"). Used: crops, crop_sentences,
    sentence_min/max, span_min/max, positives, mask_frac, and max_len for the
    transformer. ``mask_id``: the tokenizer's [MASK] id (positives="mask")."""

    def __init__(self, corpus, cfg=None, mask_id=None, **settings):
        cfg = dataclasses.replace(cfg or TrainConfig(), **settings).resolved()
        if cfg.positives == "mask" and mask_id is None:
            raise MinembedError("--positives mask needs a tokenizer with a [MASK] token")
        n_sent, sent_min, sent_max = cfg.crop_sentences, cfg.sentence_min, cfg.sentence_max
        self.corpus, self.n_sent = corpus, n_sent
        self.span_min, self.span_max = cfg.span_min, cfg.span_max
        self.positives, self.mask_frac, self.mask_id = cfg.positives, cfg.mask_frac, mask_id
        self.max_len = cfg.max_len if cfg.model == "transformer" else None
        crops = cfg.crops

        doc_off = np.asarray(corpus.doc_offsets)
        doc_len = np.diff(doc_off)
        chars = np.asarray(corpus.sent_chars)
        doc_sents = np.asarray(corpus.doc_sents)
        # kept sentences, in document order, and how many each document has
        self.kept = np.flatnonzero((chars >= sent_min) & (chars <= sent_max))  # sentence ids
        # kept sentences before each document boundary (no per-sentence int64 temporaries:
        # memory stays ~ n_kept * 8 bytes on corpora of 10^8 sentences)
        before = np.searchsorted(self.kept, doc_sents)
        self.doc_kept_start = before[:-1]  # index into self.kept
        n_kept = np.diff(before)
        self.n_windows = np.maximum(n_kept - n_sent + 1, 0)

        use_sent = self.n_windows >= 2 if crops != "spans" else np.zeros_like(doc_len, bool)
        use_span = (~use_sent) & (doc_len >= 2) if crops != "sentences" else np.zeros_like(use_sent)
        self.is_sent = use_sent
        self.usable = np.flatnonzero(use_sent | use_span)
        self.stats = {"documents": int(len(doc_len)), "sentence_crops": int(use_sent.sum()),
                      "token_spans": int(use_span.sum()),
                      "skipped": int(len(doc_len) - use_sent.sum() - use_span.sum())}

    # -- views ---------------------------------------------------------------

    def _sentence_views(self, docs, window):
        """Token ranges of the crops starting at kept-sentence `window` of each doc."""
        so = np.asarray(self.corpus.sent_offsets)
        first = self.doc_kept_start[docs] + window  # (b,) index into self.kept
        k = first[:, None] + np.arange(self.n_sent)  # (b, n) kept indices
        sent = self.kept[k]  # (b, n) sentence ids
        starts, lengths = so[sent], so[sent + 1] - so[sent]
        return starts, lengths  # (b, n) each: n ranges per view

    def _span_views(self, docs, rng):
        off = np.asarray(self.corpus.doc_offsets)
        ds, dl = off[docs], off[docs + 1] - off[docs]
        frac = rng.uniform(self.span_min, self.span_max, size=len(docs))
        length = np.clip(np.rint(frac * dl).astype(np.int64), 1, dl)
        start = ds + (rng.random(len(docs)) * (dl - length + 1)).astype(np.int64)
        return start[:, None], length[:, None]

    def _views(self, docs, rng, window=None):
        """One view per document as ranges (starts, lengths), each (b, n_sent)
        (span views use the first column only), and the sentence windows drawn,
        so that a second call with ``window=`` picks a different crop."""
        is_sent = self.is_sent[docs]
        s_docs = docs[is_sent]
        w = self.n_windows[s_docs]
        if window is None:
            win = (rng.random(len(s_docs)) * w).astype(np.int64)
        else:  # a different window: shift by 1..w-1, modulo w
            win = (window + 1 + (rng.random(len(s_docs)) * (w - 1)).astype(np.int64)) % w
        starts = np.zeros((len(docs), self.n_sent), dtype=np.int64)
        lens = np.zeros((len(docs), self.n_sent), dtype=np.int64)
        starts[is_sent], lens[is_sent] = self._sentence_views(s_docs, win)
        starts[~is_sent, :1], lens[~is_sent, :1] = self._span_views(docs[~is_sent], rng)
        return (starts, lens), win

    def _assemble(self, range_sets, rng):
        """Concatenate views (each a set of ranges) into a ragged batch (ids, offsets)."""
        starts = np.concatenate([r[0] for r in range_sets])  # (N, n)
        lens = np.concatenate([r[1] for r in range_sets])
        if self.max_len:  # cut each view to its first max_len tokens
            cum = np.cumsum(lens, axis=1)
            lens = np.clip(self.max_len - (cum - lens), 0, lens)
        view_len = lens.sum(axis=1)
        idx = _gather_ranges(starts.ravel(), lens.ravel())
        ids = np.asarray(self.corpus.ids[idx], dtype=np.int32) if len(idx) else np.zeros(0, np.int32)
        # a random read of a mapped file maps whole page-cache folios (up to MBs each)
        # into our resident memory: release them, so that memory stays flat in corpus size
        self.corpus.release_pages()
        offsets = np.zeros(len(view_len) + 1, dtype=np.int64)
        np.cumsum(view_len, out=offsets[1:])
        if self.positives == "mask":
            ids = ids.copy()
            ids[rng.random(len(ids)) < self.mask_frac] = self.mask_id
        return ids, offsets

    def sample(self, docs, rng):
        """Positive pairs for the given documents: a ragged batch of 2B views,
        anchors first (views 0..B-1), then their positives (B..2B-1)."""
        docs = np.asarray(docs, dtype=np.int64)
        a, win = self._views(docs, rng)
        if self.positives == "dropout":
            return self._assemble([a, a], rng)
        p, _ = self._views(docs, rng, window=win)
        return self._assemble([a, p], rng)
