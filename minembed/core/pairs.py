"""Positive pairs: two views of one document.

* Sentence crops (the paper's): keep the sentences of ``sentence_min``..``_max`` characters; a
  crop is ``crop_sentences`` consecutive kept sentences (a sliding window); a pair is two
  *different* crops of one document. It needs 2 windows.
* Token spans (Contriever's): two independent random spans of the document, each
  ``span_min``..``span_max`` of its tokens. With ``crops="auto"`` documents with too few kept
  sentences fall back to them; under 2 tokens: skipped.
* ``positives``: ``crops``; ``rest`` (one crop, and the rest of its document: every token
  before and after it); ``dropout`` (one crop twice, for encoders with dropout: SimCSE);
  ``mask`` (crops with a fraction of tokens masked).

Every view is a list of token ranges gathered with one vectorised index computation
(``gather_ranges``): no Python loop over documents or tokens.
"""
import numpy as np

from ..errors import MinembedError


def gather_ranges(starts, lengths):
    """Indices of the concatenated ranges [starts[i], starts[i] + lengths[i]):
    idx = repeat(starts - (cumulative length before range i), lengths) + arange(total)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(total)


class PairSampler:
    """Draws batches of positive pairs from a TokenizedCorpus, as the settings ``cfg`` say (a
    TrainConfig: crops, crop_sentences, sentence_min/max, span_min/max, positives, mask_frac, and
    model and max_len: a transformer's views are cut to max_len tokens), e.g.
    PairSampler(data, TrainConfig(crops="spans")). ``mask_id``: the [MASK] id (positives="mask")."""

    def __init__(self, corpus, cfg, mask_id=None):
        c = self.cfg = cfg
        if c.positives == "mask" and mask_id is None:
            raise MinembedError("--positives mask needs a tokenizer with a [MASK] token")
        self.corpus, self.mask_id, self.n_sent = corpus, mask_id, c.crop_sentences
        self.max_len = c.max_len if c.model == "transformer" else None
        doc_len = np.diff(np.asarray(corpus.doc_offsets))
        chars = np.asarray(corpus.sent_chars)
        # kept sentences (ids, in document order), and how many each document has; no
        # per-sentence int64 temporaries: memory stays ~ n_kept * 8 bytes on 10^8 sentences
        self.kept = np.flatnonzero((chars >= c.sentence_min) & (chars <= c.sentence_max))
        before = np.searchsorted(self.kept, np.asarray(corpus.doc_sents))
        self.doc_kept_start = before[:-1]  # index into self.kept
        self.n_windows = np.maximum(np.diff(before) - self.n_sent + 1, 0)
        self.is_sent = use_sent = (self.n_windows >= 2 if c.crops != "spans"
                                   else np.zeros_like(doc_len, bool))
        use_span = ((~use_sent) & (doc_len >= 2) if c.crops != "sentences"
                    else np.zeros_like(use_sent))
        self.usable = np.flatnonzero(use_sent | use_span)
        total, sents, spans = len(doc_len), int(use_sent.sum()), int(use_span.sum())  # documents
        self.stats = dict(documents=total, sentence_crops=sents, token_spans=spans,
                          skipped=total - sents - spans)

    def steps_per_epoch(self, batch_size):
        """Batches of ``batch_size`` pairs in one pass over the usable documents."""
        return len(self.usable) // batch_size

    def _sentence_views(self, docs, window):
        """Token ranges of the crops starting at kept-sentence `window` of each doc."""
        so = np.asarray(self.corpus.sent_offsets)
        # (b, n) ids
        sent = self.kept[(self.doc_kept_start[docs] + window)[:, None] + np.arange(self.n_sent)]
        return so[sent], so[sent + 1] - so[sent]  # starts, lengths (b, n): n ranges per view

    def _span_views(self, docs, rng):
        off = np.asarray(self.corpus.doc_offsets)
        ds, dl = off[docs], off[docs + 1] - off[docs]
        frac = rng.uniform(self.cfg.span_min, self.cfg.span_max, size=len(docs))
        length = np.clip(np.rint(frac * dl).astype(np.int64), 1, dl)
        start = ds + (rng.random(len(docs)) * (dl - length + 1)).astype(np.int64)
        return start[:, None], length[:, None]

    def _views(self, docs, rng, window=None):
        """One view per document as ranges (starts, lengths), each (b, n_sent) (span views use the
        first column only), and the sentence windows drawn (``window=``: a different crop)."""
        is_sent = self.is_sent[docs]
        s_docs = docs[is_sent]
        w = self.n_windows[s_docs]
        if window is None:
            win = (rng.random(len(s_docs)) * w).astype(np.int64)
        else:  # a different window: shift by 1..w-1, modulo w
            win = (window + 1 + (rng.random(len(s_docs)) * (w - 1)).astype(np.int64)) % w
        starts, lens = (np.zeros((len(docs), self.n_sent), dtype=np.int64) for _ in "sl")
        starts[is_sent], lens[is_sent] = self._sentence_views(s_docs, win)
        starts[~is_sent, :1], lens[~is_sent, :1] = self._span_views(docs[~is_sent], rng)
        return (starts, lens), win

    def _assemble(self, range_sets, rng):
        """Concatenate views (each a set of ranges) into a ragged batch (ids, offsets)."""
        n = max(r[0].shape[1] for r in range_sets)  # (b, n) ranges a view, padded with empty ones
        starts, lens = (np.concatenate([np.pad(r[i], ((0, 0), (0, n - r[i].shape[1])))
                                        for r in range_sets])
                        for i in (0, 1))
        if self.max_len:  # cut each view to its first max_len tokens
            cum = np.cumsum(lens, axis=1)
            lens = np.clip(self.max_len - (cum - lens), 0, lens)
        idx = gather_ranges(starts.ravel(), lens.ravel())
        ids = (np.asarray(self.corpus.ids[idx], dtype=np.int32) if len(idx)
               else np.zeros(0, np.int32))
        # a random read maps whole page-cache folios (MBs) into our memory
        self.corpus.release_pages()
        offsets = np.r_[0, np.cumsum(lens.sum(axis=1))].astype(np.int64)
        if self.cfg.positives == "mask":  # ids is a copy (a gather)
            ids[rng.random(len(ids)) < self.cfg.mask_frac] = self.mask_id
        return ids, offsets

    def sample(self, docs, rng):
        """Positive pairs for the given documents: a ragged batch of 2B views, anchors first
        (views 0..B-1), then their positives (B..2B-1)."""
        docs = np.asarray(docs, dtype=np.int64)
        a, win = self._views(docs, rng)
        if self.cfg.positives == "dropout":
            return self._assemble([a, a], rng)
        if self.cfg.positives == "rest":  # [doc start, crop start) and [crop end, doc end)
            off, (s, n) = np.asarray(self.corpus.doc_offsets), a
            end = (s + n).max(axis=1)  # where the crop's last range ends (unused ranges: (0, 0))
            rest = np.c_[off[docs], end], np.c_[s[:, 0] - off[docs], off[docs + 1] - end]
            return self._assemble([a, rest], rng)
        p, _ = self._views(docs, rng, window=win)
        return self._assemble([a, p], rng)
