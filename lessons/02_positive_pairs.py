"""Lesson 2: positive pairs, the only "label" self-supervision gets.

What it teaches
    Contrastive training needs pairs of texts that should embed close together.
    With no labels, a pair is two *views* of one document. This lesson draws
    the four kinds minembed offers and shows what they look like:

    - crops (the paper's winner): two different runs of 2 consecutive sentences
      of 100-250 characters; documents with too few such sentences fall back
      to two random token spans (each 10-50 % of the document);
    - rest (minembed's default): one crop, and the rest of its document, every
      token before and after the crop (spans of 5-20 %): the positive looks like
      the whole documents that will be embedded later;
    - dropout (SimCSE): the *same* crop twice; only the encoder's dropout masks
      make the two embeddings differ;
    - masking: crops, then a fraction of each view's tokens replaced by [MASK].

What to look at
    - how many documents get sentence crops and how many token spans;
    - the two views of a pair share vocabulary (the topic) but not the text;
    - with dropout positives, the two id sequences are identical.

Run:  python lessons/02_positive_pairs.py          (add --fast for the quick version)
"""
import os
import sys

import numpy as np

from minembed import Corpus, TrainConfig
from minembed.core import transformer
from minembed.core.pairs import PairSampler
from minembed.product.tokenize import mask_token_id

FAST = "--fast" in sys.argv or os.environ.get("MINEMBED_FAST") == "1"

# the built-in corpus, its tokenizer and its tokenised form, exactly as
# `minembed train` gets them (cached after the first run: see lesson 1)
source = Corpus()
tok = source.tokenizer(2048 if FAST else 8192)
tc = source.tokenized(tok)
doc_off, sent_off, doc_sents = (np.asarray(a)
                                for a in (tc.doc_offsets, tc.sent_offsets, tc.doc_sents))
print(f"{source.name}: {tc.n_docs:,} documents, {tc.n_tokens:,} tokens, vocabulary "
      f"{tok.get_vocab_size():,}")


def text(ids):
    return tok.decode(np.asarray(ids).tolist())


def views(ids, offsets):
    return [ids[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


# ---------------------------------------------------------------------------
# 1. Which documents can be cropped
#    A sentence is "kept" when it has 100-250 characters; a crop is n_sent = 2
#    consecutive kept sentences (a sliding window); a document needs at least
#    2 different windows, i.e. 3 kept sentences. The rest fall back to token spans.
# ---------------------------------------------------------------------------
# the paper's pairs, with TrainConfig's defaults crops="auto", crop_sentences=2
sampler = PairSampler(tc, TrainConfig(positives="crops", span_max=0.5))
st = sampler.stats
print(f"\n{st['sentence_crops']:,} documents give sentence crops, {st['token_spans']:,} token "
      f"spans, {st['skipped']} are skipped")
print("(the paper's sentence crops alone would cover only "
      f"{st['sentence_crops'] / st['documents']:.0%} of this corpus of short docstrings)")
assert st["sentence_crops"] + st["token_spans"] + st["skipped"] == st["documents"]
assert (sampler.n_windows[sampler.is_sent] >= 2).all()

# ---------------------------------------------------------------------------
# 2. A batch of crop pairs
#    sample(docs) returns one ragged batch of 2B views: anchors 0..B-1, then
#    positives B..2B-1 (view i and view B+i come from document docs[i]).
# ---------------------------------------------------------------------------
rng = np.random.default_rng(0)
sent_doc = int(np.flatnonzero(sampler.is_sent)[3])
span_doc = int(np.flatnonzero(~sampler.is_sent)[3])
ids, offsets = sampler.sample([sent_doc, span_doc], rng)
v = views(ids, offsets)
for i, (d, kind) in enumerate([(sent_doc, "sentence crops"), (span_doc, "token spans")]):
    print(f"\ndocument {d} ({kind}, {doc_off[d + 1] - doc_off[d]} tokens):")
    print(f"   anchor   ({len(v[i]):3d} tokens): {text(v[i])[:150]}...")
    print(f"   positive ({len(v[2 + i]):3d} tokens): {text(v[2 + i])[:150]}...")

# Check the views are what the docstring of minembed/core/pairs.py promises.
# A sentence-crop view is exactly 2 whole kept sentences of its document, and
# anchor and positive are different windows.
so, chars = sent_off, np.asarray(tc.sent_chars)
kept = [s for s in range(doc_sents[sent_doc], doc_sents[sent_doc + 1]) if 100 <= chars[s] <= 250]
windows = [np.concatenate([tc.ids[so[a]:so[a + 1]], tc.ids[so[b]:so[b + 1]]])
           for a, b in zip(kept[:-1], kept[1:])]
which = [[j for j, w in enumerate(windows) if np.array_equal(w, v[k])] for k in (0, 2)]
print(f"\nanchor is window {which[0]}, positive window {which[1]} of {len(windows)} "
      "(neighbouring windows share a sentence)")
assert len(which[0]) == 1 and len(which[1]) == 1 and which[0] != which[1]
# A token span is a contiguous slice of its document of 10-50 % of its tokens.
doc = np.asarray(tc.ids[doc_off[span_doc]:doc_off[span_doc + 1]])
for k in (1, 3):
    n = len(v[k])
    starts = [s for s in range(len(doc) - n + 1) if np.array_equal(doc[s:s + n], v[k])]
    assert starts, "a span view must be a contiguous part of its document"
    assert round(0.1 * len(doc)) <= n <= round(0.5 * len(doc)) + 1

# ---------------------------------------------------------------------------
# 3. Why this works: the two views of a pair share topic words
#    Jaccard overlap of the token sets, pairs against random other documents.
# ---------------------------------------------------------------------------
B = 64 if FAST else 256
docs = rng.choice(sampler.usable, size=B, replace=False)
ids, offsets = sampler.sample(docs, rng)
v = views(ids, offsets)


def jaccard(x, y):
    x, y = set(x.tolist()), set(y.tolist())
    return len(x & y) / max(1, len(x | y))


pos = np.mean([jaccard(v[i], v[B + i]) for i in range(B)])
neg = np.mean([jaccard(v[i], v[B + (i + 1) % B]) for i in range(B)])
print(f"\ntoken-set overlap (Jaccard), {B} pairs: positive pairs {pos:.3f}, "
      f"anchor vs another document's view {neg:.3f}")
assert pos > neg + 0.03, "views of one document should share more tokens than views of two"

# ---------------------------------------------------------------------------
# 4. A crop and the rest of its document (minembed's default, positives="rest")
#    The positive is every token of the document outside the crop: before it, then
#    after it. Crop + rest = the document (for a sentence crop, up to short
#    sentences between its two kept ones).
# ---------------------------------------------------------------------------
rest = PairSampler(tc, TrainConfig())  # the defaults: positives="rest", spans of 5-20 %
ids, offsets = rest.sample([span_doc], np.random.default_rng(2))
crop, rest_view = views(ids, offsets)
doc = np.asarray(tc.ids[doc_off[span_doc]:doc_off[span_doc + 1]]).tolist()
k = next(k for k in range(len(doc)) if doc[:k] + doc[k + len(crop):] == rest_view.tolist())
print(f"\ndocument {span_doc}: crop = tokens {k}..{k + len(crop) - 1} of {len(doc)}, "
      f"rest = the other {len(rest_view)}: {text(rest_view)[:100]}...")
assert doc[k:k + len(crop)] == crop.tolist() and len(crop) + len(rest_view) == len(doc)

# ---------------------------------------------------------------------------
# 5. Dropout positives: the same crop twice
#    The ids are identical; the encoder (a transformer with dropout, lesson 7)
#    sees them twice with different dropout masks. Nothing about the text differs.
# ---------------------------------------------------------------------------
drop = PairSampler(tc, TrainConfig(positives="dropout", model="transformer"))
ids, offsets = drop.sample(docs[:8], np.random.default_rng(1))
v = views(ids, offsets)
assert all(np.array_equal(v[i], v[8 + i]) for i in range(8))
print(f"\ndropout positives: anchor == positive for all 8 pairs, e.g. {text(v[0])[:80]!r}...")

# A transformer with dropout on makes two different embeddings of the same ids
# (train=True); with dropout off (train=False) they are identical.
cfg = dict(vocab_size=tok.get_vocab_size(), dim=64, layers=2, heads=2, ffn=128, max_len=64,
           dropout=0.1)
params = transformer.init_params(cfg, np.random.default_rng(0))
e1, _ = transformer.forward(params, ids, offsets, cfg, train=True, rng=np.random.default_rng(10))
e2, _ = transformer.forward(params, ids, offsets, cfg, train=True, rng=np.random.default_rng(11))
e3, _ = transformer.forward(params, ids, offsets, cfg, train=False)
e4, _ = transformer.forward(params, ids, offsets, cfg, train=False)


def cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


c_pos = cos(e1[:8], e2[8:]).mean()
c_neg = cos(e1[:8], np.roll(e2[8:], 1, axis=0)).mean()
print(f"untrained transformer, two dropout masks: cosine(anchor, its positive) {c_pos:.4f}, "
      f"cosine(anchor, another document) {c_neg:.4f}")
print("   the positive is far more similar than any negative before any training: the task is easy")
assert np.array_equal(e3, e4) and not np.array_equal(e1, e2)
assert c_pos > c_neg

# ---------------------------------------------------------------------------
# 6. Masking positives: crops, then each token replaced by [MASK] with
#    probability mask_frac (independently per view)
# ---------------------------------------------------------------------------
mid = mask_token_id(tok)
mask = PairSampler(tc, TrainConfig(positives="mask", mask_frac=0.3), mask_id=mid)
ids, offsets = mask.sample(docs, np.random.default_rng(2))
frac = float((ids == mid).mean())
v = views(ids, offsets)
print(f"\nmasking positives (mask_frac 0.3): {frac:.1%} of the tokens are [MASK] ({mid}); e.g.")
print("  ", " ".join(tok.id_to_token(int(i)) for i in v[0][:24]), "...")
assert abs(frac - 0.3) < 0.03

print("\nlesson 2 OK")
