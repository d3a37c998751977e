"""Hostile input: whatever bytes a corpus file holds, reading, sentence splitting,
tokenising and crop sampling give a correct result or a MinembedError; never a
crash or a hang. Property-based (hypothesis), plus explicit lines of megabytes."""
import gzip
import json
import os
import tempfile
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minembed.product.corpus import iter_documents
from minembed.core.pairs import PairSampler
from minembed.product.settings import TrainConfig
from minembed.errors import MinembedError
from minembed.product.tokenize import (mask_token_id, split_sentences, tokenize_corpus,
                                       train_tokenizer)

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

# text made of the characters that break readers: newlines of every kind, BOMs,
# NUL and other controls, Unicode separators, combining marks, astral characters
NASTY = ["\n", "\r", "\r\n", "\ufeff", "\x00", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029",
         "\t", " ", ".", "!", "?", '"', ")", "\u0301", "\u200b", "é", "ß", "中", "😀", "a", "b",
         "Z", "{", "}", '\\"', "\\u", "[", ":"]
nasty_text = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=8)),
                      max_size=60).map("".join)
raw_bytes = st.one_of(st.binary(max_size=400), nasty_text.map(lambda t: t.encode("utf-8")),
                      st.lists(st.sampled_from([b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\x00", b"\r",
                                                b"\n", b"ab", b" ", b"\xe2\x80\xa8"]),
                               max_size=40).map(b"".join))


def read(data, fmt, name="corpus.txt", max_doc_chars=50):
    """(documents, None) or (None, the MinembedError); anything else raised is a failure."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(gzip.compress(data) if name.endswith(".gz") else data)
        try:
            return list(iter_documents(path, fmt, max_doc_chars)), None
        except MinembedError as e:
            assert str(e) and "\n" not in str(e).strip()
            return None, e


def check_docs(docs, max_doc_chars=50, nul_ok=False):
    for text, label in docs:
        assert text and text == " ".join(text.split())  # cleaned: no whitespace runs or edges
        assert len(text) <= max_doc_chars
        assert nul_ok or "\x00" not in text  # (JSON may spell one: "\u0000")
        text.encode("utf-8")  # real characters only (no lone surrogates)


@SETTINGS
@given(data=raw_bytes, fmt=st.sampled_from(["lines", "paragraphs", "jsonl"]), gz=st.booleans())
@example(data=b"\x01" * 49 + b"\r\x01", fmt="paragraphs", gz=False)  # was 51 characters: the
def test_readers_give_clean_documents_or_a_clean_error(data, fmt, gz):  # joining space uncounted
    docs, err = read(data, fmt, "corpus.txt.gz" if gz else "corpus.txt")
    if err is None:
        check_docs(docs, nul_ok=fmt == "jsonl")


@SETTINGS
@given(lines=st.lists(nasty_text, max_size=12), newline=st.sampled_from(["\n", "\r\n", "\r"]),
       bom=st.booleans())
def test_lines_format_oracle(lines, newline, bom):
    """Valid UTF-8 without NULs: one document per line, however lines end."""
    lines = [ln.replace("\x00", "") for ln in lines]
    text = ("\ufeff" if bom else "") + newline.join(lines)
    docs, err = read(text.encode("utf-8"), "lines", max_doc_chars=10_000)
    assert err is None, err
    # what a reader with universal newlines sees
    expected = [" ".join(p.split()) for p in text.lstrip("\ufeff").replace("\r\n", "\n")
                .replace("\r", "\n").split("\n")]
    assert [t for t, _ in docs] == [e for e in expected if e]


@SETTINGS
@given(texts=st.lists(nasty_text, max_size=6), labels=st.lists(st.one_of(
    st.none(), st.integers(), st.text(max_size=5), st.floats(allow_nan=True)), max_size=6),
    junk=st.sampled_from(["", "\r", " ", "\ufeff"]))
def test_jsonl_roundtrip(texts, labels, junk):
    recs = [{"text": t} if i >= len(labels) or labels[i] is None
            else {"text": t, "label": labels[i]}
            for i, t in enumerate(texts)]
    data = "\n".join(junk + json.dumps(r) for r in recs).encode("utf-8")
    docs, err = read(data, "jsonl", "c.jsonl", max_doc_chars=10_000)
    if err is not None:  # only a BOM in front of a later line is not JSON
        assert junk == "\ufeff" and len(recs) > 1, err
        return
    check_docs(docs, 10_000, nul_ok=True)
    assert [t for t, _ in docs] == [" ".join(r["text"].split()) for r in recs if r["text"].split()]


@pytest.mark.parametrize("data", [
    b'{"text": "a \\ud800 b"}\n',  # a lone surrogate escape
    b"[" * 200_000 + b"\n",  # nesting deeper than the recursion limit
    b'{"text": "a", "label": ' + b"9" * 10_000 + b"}\n",  # an integer too long to convert
    b'{"text": 1}\n', b"[]\n", b'"text"\n', b'{"text": "a"}{"text": "b"}\n',
])
def test_jsonl_bad_lines_are_clean_errors(data):
    docs, err = read(data, "jsonl", "c.jsonl", max_doc_chars=1_000_000)
    assert err is not None and "line 1" in str(err)


def test_corrupt_gzip_is_a_clean_error():
    rng = np.random.default_rng(0)
    good = gzip.compress(b"".join(bytes(rng.integers(97, 105, 200)) + b"\n" for _ in range(500)))
    for _ in range(20):
        bad = np.frombuffer(good, np.uint8).copy()
        bad[rng.integers(20, len(bad), 5)] = rng.integers(0, 256, 5)
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "c.txt.gz")
            with open(p, "wb") as f:
                f.write(bytes(bad))
            try:
                list(iter_documents(p, "lines"))
            except MinembedError:
                pass


@pytest.mark.parametrize("fmt", ["lines", "paragraphs", "jsonl"])
def test_lines_of_megabytes(tmp_path, fmt):
    """A 6 MB line is refused after reading at most 4 x max_doc_chars bytes; one of
    3 MB (multi-byte characters) is read when the limit allows it."""
    p = tmp_path / "big.txt"
    p.write_bytes(b"x" * 6_000_000 + b"\nshort\n")
    t = time.perf_counter()
    with pytest.raises(MinembedError, match="line 1 is longer than|paragraph ending at line 1"):
        list(iter_documents(p, fmt, max_doc_chars=1_000_000))
    assert time.perf_counter() - t < 5
    word = "é中😀 " * 300_000  # 3 MB of text, 1.2 M characters
    wrap = (lambda t: json.dumps({"text": t})) if fmt == "jsonl" else (lambda t: t)
    p.write_text("\n\n".join(map(wrap, ["a", word, "b"])) + "\n", encoding="utf-8")
    docs = [t for t, _ in iter_documents(p, fmt, max_doc_chars=2_000_000)]
    assert word.strip() in docs


# ---------------------------------------------------------------------------
# sentences, tokenising, crops

@SETTINGS
@given(text=nasty_text)
def test_split_sentences_covers_the_text(text):
    sents = split_sentences(text)
    assert all(s and s == s.strip() for s in sents)
    assert "".join("".join(s.split()) for s in sents) == "".join(text.split())


def test_split_sentences_is_linear_on_pathological_input():
    for text in [". " * 500_000, "." + "'" * 1_000_000, ".'" * 500_000, "a" * 1_000_000,
                 "!)" * 300_000 + " x", "." * 1_000_000]:
        t = time.perf_counter()
        split_sentences(text)
        assert time.perf_counter() - t < 2, text[:10]


@pytest.fixture(scope="module")
def tok():
    texts = ["The cat sat on the mat. It was happy! Was it? Yes.", "éß中😀 mixed text, here."] * 20
    return train_tokenizer(texts, vocab_size=80)


def clean_docs(texts):
    """Documents as the readers give them: cleaned, non-empty."""
    return [c for c in (" ".join(t.split()) for t in texts) if c]


def is_subsequence(view, doc):
    it = iter(doc.tolist())
    return all(any(x == y for y in it) for x in view.tolist())


@SETTINGS
@given(texts=st.lists(nasty_text, min_size=1, max_size=12), data=st.data())
def test_tokenise_and_sample_crops(tok, texts, data):
    docs = clean_docs(texts)
    with tempfile.TemporaryDirectory() as d:
        tc = tokenize_corpus(tok, iter(docs), os.path.join(d, "c"), chunk_docs=3)
        assert tc.n_docs == len(docs)
        assert tc.doc_offsets[0] == 0 and tc.doc_offsets[-1] == tc.n_tokens
        assert np.all(np.diff(tc.doc_offsets) >= 0) and np.all(np.diff(tc.sent_offsets) >= 0)
        assert np.all((tc.ids >= 0) & (tc.ids < tok.get_vocab_size()))
        n_sent = data.draw(st.integers(1, 2))
        positives = data.draw(st.sampled_from(["crops", "mask", "dropout"]))
        max_len = data.draw(st.sampled_from([None, 3, 50]))
        sampler = PairSampler(tc, TrainConfig(crops=data.draw(st.sampled_from(["auto", "sentences",
                                                                               "spans"])),
                              crop_sentences=n_sent, sentence_min=data.draw(st.integers(0, 5)),
                              sentence_max=40, positives=positives,
                              model="transformer" if max_len or positives == "dropout" else "bag",
                              max_len=max_len or 10**6), mask_token_id(tok))
        st_ = sampler.stats
        assert st_["sentence_crops"] + st_["token_spans"] + st_["skipped"] == len(docs)
        if len(sampler.usable) == 0:
            return
        batch = data.draw(st.lists(st.sampled_from(sampler.usable.tolist()), min_size=1,
                                   max_size=6))
        batch = np.asarray(batch)
        ids, offsets = sampler.sample(batch, np.random.default_rng(data.draw(st.integers(0, 99))))
        b = len(batch)
        assert offsets.shape == (2 * b + 1,) and offsets[0] == 0 and offsets[-1] == len(ids)
        assert np.all(np.diff(offsets) >= 0) and ids.dtype == np.int32
        if sampler.max_len:
            assert np.all(np.diff(offsets) <= sampler.max_len)
        if positives == "mask":
            return  # masked ids are no longer the document's
        for v in range(2 * b):
            doc = batch[v % b]
            view = ids[offsets[v]:offsets[v + 1]]
            whole = np.asarray(tc.ids[tc.doc_offsets[doc]:tc.doc_offsets[doc + 1]])
            assert is_subsequence(view, whole)
            if not sampler.is_sent[doc]:
                assert len(view) >= 1  # a span holds at least one token


def test_megabyte_document_tokenises_and_samples(tok, tmp_path):
    docs = ["a" * 1_000_000, "word. " * 150_000, "x y"]
    t = time.perf_counter()
    tc = tokenize_corpus(tok, iter(docs), tmp_path / "c")
    sampler = PairSampler(tc, TrainConfig(sentence_min=1, sentence_max=10, model="transformer",
                                          max_len=64))
    ids, offsets = sampler.sample(sampler.usable, np.random.default_rng(0))
    assert offsets[-1] == len(ids) and sampler.stats["skipped"] == 0
    assert time.perf_counter() - t < 30
