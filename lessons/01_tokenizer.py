"""Lesson 1: a corpus and its tokenizer.

What it teaches
    Everything minembed learns starts as raw text and becomes a flat array of
    integer token ids. This lesson loads the built-in corpus (docstrings of
    numpy, scipy and scikit-learn, labelled by the package that defines each
    object), trains a subword (BPE) tokenizer on it, and tokenises the whole
    corpus into the memory-mapped layout that training reads.

What to look at
    - how a sentence breaks into pieces ("▁" marks the start of a word);
    - how few distinct tokens cover most of the text (Zipf's law): the
      frequent ones get trained constantly, the rare ones hardly at all;
    - the five arrays of a tokenised corpus, and how documents and sentences
      are just offsets into one long id array.

Run:  python lessons/01_tokenizer.py          (add --fast for the quick version)
"""
import os
import sys
import tempfile

import numpy as np

import minembed
from minembed.product.tokenize import (SPECIAL_TOKENS, encode_texts, fingerprint,
                                       split_sentences, tokenize_corpus, train_tokenizer)

FAST = "--fast" in sys.argv or os.environ.get("MINEMBED_FAST") == "1"

# ---------------------------------------------------------------------------
# 1. The corpus
#    minembed.builtin(): the docstrings of numpy, scipy and scikit-learn, shipped
#    with the package; texts[i] is one document, labels[i] its package.
# ---------------------------------------------------------------------------
texts, labels = minembed.builtin()
lengths = np.array([len(t) for t in texts])
names, counts = np.unique(labels, return_counts=True)
print(f"corpus: {len(texts):,} documents, {len(names)} labels, "
      f"mean {lengths.mean():.0f} / median {np.median(lengths):.0f} characters")
for name, n in sorted(zip(names, counts), key=lambda nc: -nc[1])[:5]:
    print(f"   {n:4d}  {name}")
print("   ...")
print(f"\nlabel of document 0: {labels[0]}\ntext: {texts[0][:200]}...")
assert len(texts) == len(labels) > 1000
assert lengths.min() >= 100   # shorter docstrings were left out when the corpus was built

# ---------------------------------------------------------------------------
# 2. Sentences
#    A sentence ends at . ! or ? followed by whitespace. Positive pairs
#    (lesson 2) are built from runs of whole sentences, so the corpus keeps
#    the sentence boundaries.
# ---------------------------------------------------------------------------
sents = split_sentences(texts[0])
print(f"\ndocument 0 has {len(sents)} sentences:")
for s in sents:
    print(f"   [{len(s):3d} chars] {s[:90]}")
# the split loses only the whitespace between sentences
assert "".join("".join(sents).split()) == "".join(texts[0].split())

# ---------------------------------------------------------------------------
# 3. A subword tokenizer
#    BPE starts from characters and repeatedly merges the most frequent
#    adjacent pair into a new token, until the vocabulary has vocab_size
#    entries. Frequent words become one token; rare words are spelled with
#    several pieces, so there is (almost) never an unknown token.
# ---------------------------------------------------------------------------
vocab_size = 2048 if FAST else 8192
train_texts = texts[:800] if FAST else texts
tok = train_tokenizer(train_texts, vocab_size=vocab_size)
print(f"\ntrained a BPE tokenizer on {len(train_texts):,} documents: "
      f"{tok.get_vocab_size():,} tokens; the first are {[tok.id_to_token(i) for i in range(6)]}")
assert tok.get_vocab_size() == vocab_size
assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == [0, 1, 2]  # [PAD] [UNK] [MASK]

# The trainer is deterministic: the same texts give the same vocabulary (and so
# the same model for the same seed). A fingerprint hashes the whole definition.
tok_again = train_tokenizer(train_texts[:300], vocab_size=512)
assert fingerprint(tok_again) == fingerprint(train_tokenizer(train_texts[:300], vocab_size=512))

example = "The sparse eigenvalue solver uses Lanczos iterations on a symmetric matrix."
enc = tok.encode(example, add_special_tokens=False)
print(f"\n{example!r}\n -> {len(enc.ids)} tokens: {enc.tokens}\n -> ids {enc.ids}")
# decoding gives back the *normalised* text (lower case, accents stripped):
decoded = tok.decode(enc.ids)
print(f" -> decoded: {decoded!r}")
assert decoded == tok.normalizer.normalize_str(example)

# the same round trip on real sentences of the corpus
sample = [s for t in texts[:100] for s in split_sentences(t)]
ok = sum(tok.decode(tok.encode(s, add_special_tokens=False).ids) == tok.normalizer.normalize_str(s)
         for s in sample)
print(f"round trip exact on {ok}/{len(sample)} corpus sentences")
assert ok >= 0.95 * len(sample), "decode(encode(s)) should give back the normalised sentence"

# ---------------------------------------------------------------------------
# 4. Token counts
#    encode_texts gives a *ragged* batch: one flat id array plus offsets,
#    text i = ids[offsets[i]:offsets[i+1]]. No padding anywhere.
# ---------------------------------------------------------------------------
ids, offsets = encode_texts(tok, texts)
lengths = np.diff(offsets)
counts = np.bincount(ids, minlength=vocab_size)
print(f"\n{len(ids):,} tokens in all; tokens per document: mean {lengths.mean():.0f}, "
      f"median {np.median(lengths):.0f}, max {lengths.max()}")
assert offsets[0] == 0 and offsets[-1] == len(ids) and (lengths > 0).all()
top = np.argsort(-counts)
print("most frequent tokens:",
      ", ".join(f"{tok.id_to_token(int(i))!r} {counts[i]:,}" for i in top[:12]))
share = np.cumsum(counts[top]) / counts.sum()
for k in (10, 100, 1000):
    print(f"   the {k:5d} most frequent tokens are {share[k - 1]:6.1%} of the text")
unused = int((counts == 0).sum())
once = int((counts == 1).sum())
print(f"   {unused} tokens never occur, {once} occur once: their embedding rows get "
      "(almost) no training")
unk = counts[tok.token_to_id("[UNK]")] / counts.sum()
print(f"   [UNK] is {unk:.4%} of the tokens")
assert share[99] > 0.4        # Zipf: a hundred tokens cover a large part of any text
assert unk < 0.01

# ---------------------------------------------------------------------------
# 5. The tokenised corpus on disk (what training memory-maps)
#    Each sentence is tokenised on its own, so sentence boundaries in token
#    space come for free.
# ---------------------------------------------------------------------------
with tempfile.TemporaryDirectory() as d:
    tc = tokenize_corpus(tok, texts, os.path.join(d, "corpus"))
    print(f"\ntokenised corpus in {tc.path}: {tc.meta}")
    for name in tc.FILES:
        a = getattr(tc, name)
        print(f"   {name:13s} {str(a.dtype):6s} {str(a.shape):10s} "
              f"{np.asarray(a[:6]).tolist()} ...")
    # document d = ids[doc_offsets[d]:doc_offsets[d+1]], made of sentences
    # doc_sents[d]..doc_sents[d+1]-1, and sentence s = ids[sent_offsets[s]:sent_offsets[s+1]]
    d0 = 0
    s0, s1 = tc.doc_sents[d0], tc.doc_sents[d0 + 1]
    assert (tc.sent_offsets[s0] == tc.doc_offsets[d0]
            and tc.sent_offsets[s1] == tc.doc_offsets[d0 + 1])
    assert s1 - s0 == len(split_sentences(texts[d0]))
    assert list(tc.sent_chars[s0:s1]) == [len(s) for s in split_sentences(texts[d0])]
    assert tc.n_tokens == len(ids) and tc.n_docs == len(texts)
    first = tc.ids[tc.sent_offsets[s0]:tc.sent_offsets[s0 + 1]]
    print(f"   sentence 0 of document 0 from the arrays: {tok.decode(first.tolist())!r}")
    assert tok.decode(first.tolist()) == tok.normalizer.normalize_str(split_sentences(texts[d0])[0])

print("\nlesson 1 OK")
