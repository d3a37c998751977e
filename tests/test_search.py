"""Search: nearest documents by cosine similarity, the embedding cache next to the model."""
import glob
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from minembed.product.cli import main
from minembed.errors import MinembedError
from minembed.product.search import CorpusIndex, search
from minembed.product.run import train
from minembed.product.settings import TrainConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, topic_txt):
    out = tmp_path_factory.mktemp("search") / "model"
    train(topic_txt, out, TrainConfig(dim=32, epochs=2, batch_size=32, vocab_size=500), quiet=True)
    return str(out)


def caches(model_dir):
    return glob.glob(os.path.join(model_dir, "search-*.npy"))


def test_a_document_finds_itself_first(model_dir, topic_jsonl, topic_docs):
    texts, labels = topic_docs
    index = CorpusIndex.build(model_dir, topic_jsonl)
    for i in (0, 61, 130, 239):
        hits = index.search(texts[i], k=5)
        assert hits[0].index == i and hits[0].text == texts[i]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0].label == labels[i]
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_cache_is_reused_and_follows_the_corpus(model_dir, topic_jsonl, tmp_path):
    corpus = tmp_path / "c.jsonl"
    shutil.copy(topic_jsonl, corpus)
    first = CorpusIndex.build(model_dir, str(corpus))
    assert not first.from_cache and len(caches(model_dir)) >= 1
    second = CorpusIndex.build(model_dir, str(corpus))
    assert second.from_cache
    assert np.array_equal(first.embeddings, second.embeddings)
    path = [p for p in caches(model_dir) if os.path.getmtime(p) >= os.path.getmtime(corpus)]
    assert np.load(path[0], allow_pickle=False).dtype == np.float32
    # a changed corpus is embedded again; the stale cache for that file is removed
    n_before = len(caches(model_dir))
    lines = corpus.read_text().splitlines()[:50]
    corpus.write_text("\n".join(lines) + "\n")
    third = CorpusIndex.build(model_dir, str(corpus))
    assert not third.from_cache and third.embeddings.shape[0] == 50
    assert len(caches(model_dir)) == n_before


def test_damaged_cache_is_rebuilt(model_dir, topic_txt):
    CorpusIndex.build(model_dir, topic_txt)
    for p in caches(model_dir):
        with open(p, "wb") as f:
            f.write(b"not an npy file")
    again = CorpusIndex.build(model_dir, topic_txt)
    assert not again.from_cache and again.labels is None
    assert again.search("star planet orbit telescope", k=3)[0].label is None


def test_function_and_errors(model_dir, topic_txt):
    hits = search(model_dir, topic_txt, "guitar melody chord", k=3, cache=False)
    assert len(hits) == 3
    assert len(search(model_dir, topic_txt, "guitar", k=1000)) == 240
    index = CorpusIndex.build(model_dir, topic_txt)
    with pytest.raises(MinembedError, match="empty"):
        index.search("   ")
    with pytest.raises(MinembedError, match="k must"):
        index.search("guitar", k=0)


def test_cli(model_dir, topic_jsonl, topic_docs):
    texts, labels = topic_docs
    r = CliRunner().invoke(main, ["search", model_dir, topic_jsonl, texts[5], "-k", "3"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "1." and "line 6" in lines[0]
    assert f"[{labels[5]}]" in lines[0] and "1.000" in lines[0]
    r = CliRunner().invoke(main, ["search", model_dir, topic_jsonl, "piano drum", "--json"])
    hits = [json.loads(line) for line in r.output.strip().splitlines()]
    assert len(hits) == 10 and set(hits[0]) == {"rank", "index", "line", "score", "text", "label"}
    r = CliRunner().invoke(main, ["search", model_dir + "-missing", topic_jsonl, "x"])
    assert r.exit_code == 1 and "not found" in r.output
