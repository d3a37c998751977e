"""Tokenised corpus layout and positive-pair sampling."""
import numpy as np
import pytest

from minembed.core.pairs import PairSampler, gather_ranges
from minembed.product.settings import TrainConfig
from minembed.errors import MinembedError
from minembed.product.tokenize import (encode_texts, fingerprint, mask_token_id, split_sentences,
                               tokenize_corpus, train_tokenizer)

LONG = ("This sentence is long enough to be kept by the paper's rule of one hundred characters, "
        "yes it is indeed")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    texts = [
        " ".join(f"{LONG} number {i}." for i in range(5)),  # 5 kept sentences -> 4 windows
        f"{LONG} alpha. {LONG} beta.",  # 2 kept -> 1 window: falls back to spans
        "Short doc with a few words only.",  # spans
        "x",  # 1 token: skipped
        # kept sentences interleaved with short ones
        " ".join(f"Tiny {i}. {LONG} {i}." for i in range(3)),
    ]
    tok = train_tokenizer(texts * 20, vocab_size=300)
    c = tokenize_corpus(tok, iter(texts), tmp_path_factory.mktemp("tc") / "c", chunk_docs=2)
    return texts, tok, c


def sampler(corpus, mask_id=None, **settings):
    return PairSampler(corpus, TrainConfig(**settings).resolved(), mask_id)


def test_gather_ranges():
    idx = gather_ranges([5, 0, 9], [2, 3, 1])
    assert idx.tolist() == [5, 6, 0, 1, 2, 9]


def test_split_sentences():
    assert split_sentences('One. Two! "Three?" Four') == ["One.", "Two!", '"Three?"', "Four"]
    assert split_sentences(" A (b.) c.\n\nD ") == ["A (b.)", "c.", "D"]


def test_tokenised_layout_matches_direct_encoding(corpus):
    texts, tok, c = corpus
    assert c.n_docs == len(texts)
    ids, offsets = encode_texts(tok, texts)
    np.testing.assert_array_equal(np.asarray(c.ids), ids)
    np.testing.assert_array_equal(np.asarray(c.doc_offsets), offsets)
    # sentences tile the documents
    ds, so = np.asarray(c.doc_sents), np.asarray(c.sent_offsets)
    assert np.array_equal(so[ds], np.asarray(c.doc_offsets))
    assert c.sent_chars[0] == len(f"{LONG} number 0.")
    assert c.meta["tokenizer"] == fingerprint(tok)


def test_tokenizer_training_is_deterministic(corpus):
    texts, tok, _ = corpus
    assert fingerprint(train_tokenizer(texts * 20, vocab_size=300)) == fingerprint(tok)


def test_stats_and_fallback(corpus):
    _, _, c = corpus
    s = sampler(c, TrainConfig())
    assert s.stats == {"documents": 5, "sentence_crops": 2, "token_spans": 2, "skipped": 1}
    assert list(s.usable) == [0, 1, 2, 4]
    only_sent = sampler(c, crops="sentences")
    assert only_sent.stats["skipped"] == 3
    only_span = sampler(c, crops="spans")
    assert only_span.stats["token_spans"] == 4


def test_sentence_crops_are_two_different_windows_of_kept_sentences(corpus):
    texts, tok, c = corpus
    s = sampler(c, positives="crops")
    for seed in range(20):
        ids, off = s.sample(np.array([0, 4]), np.random.default_rng(seed))
        views = [tok.decode(ids[off[i]:off[i + 1]].tolist()) for i in range(4)]
        a0, a4, p0, p4 = views
        assert a0 != p0 and a4 != p4
        assert a0.count("number") == 2  # two consecutive kept sentences
        assert "tiny" not in a4 and "tiny" not in p4  # short sentences are not kept
        assert a0 in texts[0].lower() or a0.replace(" .", ".") in texts[0].lower()


def test_span_views_are_within_bounds(corpus):
    _, _, c = corpus
    s = sampler(c, crops="spans", span_min=0.2, span_max=0.4, positives="crops")
    docs = np.repeat(np.array([0, 1, 2, 4]), 50)
    ids, off = s.sample(docs, np.random.default_rng(0))
    lens = np.diff(off)
    doc_len = np.diff(np.asarray(c.doc_offsets))[np.tile(docs, 2)]
    assert np.all(lens >= 1) and np.all(lens <= np.ceil(0.4 * doc_len))
    # each view is a contiguous slice of its document
    for i in range(0, len(lens), 37):
        d = np.tile(docs, 2)[i]
        doc = np.asarray(c.ids[c.doc_offsets[d]:c.doc_offsets[d + 1]]).tolist()
        v = ids[off[i]:off[i + 1]].tolist()
        assert any(doc[j:j + len(v)] == v for j in range(len(doc) - len(v) + 1))


@pytest.mark.parametrize("crops", ["spans", "auto"])
def test_rest_positives_are_the_document_around_the_crop(corpus, crops):
    """positives="rest": the positive is the document's tokens before the crop, then after it
    (for a sentence crop, after its last sentence); with token spans, crop + rest = document."""
    _, _, c = corpus
    s = sampler(c, crops=crops, positives="rest")
    docs = np.array([0, 1, 2, 4])
    for seed in range(10):
        ids, off = s.sample(docs, np.random.default_rng(seed))
        for j, d in enumerate(docs):
            doc = np.asarray(c.ids[c.doc_offsets[d]:c.doc_offsets[d + 1]]).tolist()
            crop, rest = ids[off[j]:off[j + 1]].tolist(), ids[off[j + 4]:off[j + 5]].tolist()
            assert crop and len(crop) + len(rest) <= len(doc)
            gap = len(doc) - len(crop) - len(rest)  # short sentences between a crop's two
            assert gap == 0 or (crops == "auto" and d == 4)
            span = len(crop) + gap                  # the crop's run in the document, from k
            assert any(rest == doc[:k] + doc[k + span:] and doc[k] == crop[0]
                       and doc[k + span - 1] == crop[-1]
                       and (gap or doc[k:k + span] == crop) for k in range(len(rest) + 1))


def test_dropout_positives_are_identical_views_and_mask_replaces_tokens(corpus):
    _, tok, c = corpus
    ids, off = sampler(c, model="transformer", max_len=10**6,
                       positives="dropout").sample(np.array([0, 2]), np.random.default_rng(0))
    assert ids[off[0]:off[1]].tolist() == ids[off[2]:off[3]].tolist()
    m = mask_token_id(tok)
    ids, off = sampler(c, positives="mask", mask_frac=0.5, mask_id=m).sample(
        np.array([0, 4]), np.random.default_rng(0))
    frac = (ids == m).mean()
    assert 0.3 < frac < 0.7


def test_max_len_cuts_views(corpus):
    _, _, c = corpus
    ids, off = sampler(c, model="transformer", max_len=7).sample(np.array([0, 1, 2, 4]),
                                                                 np.random.default_rng(0))
    assert np.diff(off).max() <= 7


def test_same_rng_same_batch(corpus):
    _, _, c = corpus
    s = sampler(c, TrainConfig())
    a = s.sample(np.array([0, 1, 2, 4]), np.random.default_rng(3))
    b = s.sample(np.array([0, 1, 2, 4]), np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kw, msg",
                         [(dict(crops="words"), "--crops"), (dict(positives="x"), "--positives"),
                          (dict(crop_sentences=0), "--crop-sentences"),
                          (dict(span_min=0.6, span_max=0.5), "span"),
                          (dict(positives="mask"), "MASK")])
def test_bad_options(corpus, kw, msg):
    with pytest.raises(MinembedError, match=msg):
        sampler(corpus[2], **kw)
