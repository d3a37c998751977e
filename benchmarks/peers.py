"""Peer methods: what a user would pick instead of minembed, as rows of benchmarks/quality.py.

    pip install -e ".[bench]"        # gensim, fasttext, torch, sentence-transformers, datasets
    python benchmarks/quality.py --corpora DIR --peers all

Each peer is ``(texts, seed) -> (X, seconds)``: X the documents' vectors (dense (N, d) or sparse
rows; kNN by cosine), seconds the time from the texts to X. ``static-mnrl`` also needs the corpus
(``corpus=``: a path, None for the built-in one), and its seconds are the training loop's alone, as
minembed's "train s" are (its pairs are made before; tokenizer and tokenised corpus from
minembed's cache). Nothing here is imported by minembed: the libraries are the ``bench`` extra.

Tokens: TF-IDF and BM25 use scikit-learn's (lower-cased words of 2+ letters or digits); gensim and
fastText gensim's ``simple_preprocess`` (lower-cased alphabetic words of 2-15 letters); the static
model minembed's own tokenizer and pairs. All at 256 dimensions, one worker thread (gensim and
fastText are then deterministic for a seed; with more they are not).
"""
import functools
import os
import tempfile
import time

import numpy as np

DIM = 256
EPOCHS = {"doc2vec": 40, "word2vec": 20, "fasttext": 20}  # small corpora (3k-15k documents)


def _timed(fn):
    t = time.perf_counter()
    X = fn()
    return X, time.perf_counter() - t


# ---------------------------------------------------------------------------
# sparse: TF-IDF and BM25

def _tfidf(texts, min_df):
    from sklearn.feature_extraction.text import TfidfVectorizer
    return _timed(lambda: TfidfVectorizer(sublinear_tf=True, min_df=min_df).fit_transform(texts))


def tfidf_min_df1(texts, seed=0):
    """TF-IDF, sublinear tf, every word (min_df 1)."""
    return _tfidf(texts, 1)


def tfidf_min_df2(texts, seed=0):
    """TF-IDF, sublinear tf, words of two documents or more (minembed.product.evaluate.tfidf)."""
    return _tfidf(texts, 2)


def bm25_weights(texts, k1=1.2, b=0.75):
    """Each document as its words' BM25 weights (a sparse row): idf(w) * tf (k1 + 1) /
    (tf + k1 (1 - b + b |d| / avgdl)), idf = log(1 + (N - df + 0.5) / (df + 0.5)) (Lucene's)."""
    from sklearn.feature_extraction.text import CountVectorizer
    tf = CountVectorizer().fit_transform(texts).tocsr().astype(np.float64)
    n = tf.shape[0]
    dl = np.asarray(tf.sum(axis=1)).ravel()
    df = np.bincount(tf.indices, minlength=tf.shape[1])
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    norm = k1 * (1 - b + b * dl / max(dl.mean(), 1e-12))               # per document
    rows = np.repeat(np.arange(n), np.diff(tf.indptr))
    tf.data = idf[tf.indices] * tf.data * (k1 + 1) / (tf.data + norm[rows])
    return tf


def bm25(texts, seed=0):
    """BM25 term weights (k1 1.2, b 0.75, IDF from the corpus), every word; cosine kNN."""
    return _timed(lambda: bm25_weights(texts))


# ---------------------------------------------------------------------------
# gensim and fastText

def _words(texts):
    from gensim.utils import simple_preprocess
    return [simple_preprocess(t) for t in texts]


def doc2vec(texts, seed=0):
    """gensim Doc2Vec PV-DBOW with skip-gram word training (dm=0, dbow_words=1), 256 d, window 5,
    min_count 2, 40 epochs; each document's trained vector."""
    from gensim.models.doc2vec import Doc2Vec, TaggedDocument

    def run():
        docs = [TaggedDocument(w, [i]) for i, w in enumerate(_words(texts))]
        m = Doc2Vec(docs, dm=0, dbow_words=1, vector_size=DIM, window=5, min_count=2,
                    epochs=EPOCHS["doc2vec"], workers=1, seed=seed)
        return np.vstack([m.dv[i] for i in range(len(docs))])
    return _timed(run)


def _word2vec(words, seed):
    from gensim.models import Word2Vec
    return Word2Vec(words, sg=1, vector_size=DIM, window=5, min_count=2, epochs=EPOCHS["word2vec"],
                    workers=1, seed=seed).wv


def _pool(words, wv, weight=None):
    """Each document's (weighted) mean of its known words' vectors; zeros for none."""
    X = np.zeros((len(words), wv.vector_size), np.float32)
    for i, ws in enumerate(words):
        known = [w for w in ws if w in wv.key_to_index]
        if known:
            w = np.array([weight[k] for k in known] if weight else [1.0] * len(known), np.float32)
            X[i] = w @ wv[known] / len(known)
    return X


def word2vec_mean(texts, seed=0):
    """gensim Word2Vec skip-gram (256 d, window 5, min_count 2, 20 epochs); mean of word vectors."""
    def run():
        words = _words(texts)
        return _pool(words, _word2vec(words, seed))
    return _timed(run)


def sif(words, wv, a=1e-3, seed=0):
    """SIF (Arora et al. 2017): words weighted a / (a + p(w)), p from the corpus's counts; then
    the projection on the documents' first singular vector removed (TruncatedSVD, as theirs)."""
    from collections import Counter

    from sklearn.decomposition import TruncatedSVD
    counts = Counter(w for ws in words for w in ws)
    total = sum(counts.values())
    X = _pool(words, wv, {w: a / (a + c / total) for w, c in counts.items()})
    u = TruncatedSVD(n_components=1, n_iter=7, random_state=seed).fit(X).components_  # (1, d)
    return X - (X @ u.T) @ u


def word2vec_sif(texts, seed=0):
    """The same Word2Vec, SIF-weighted mean (a = 1e-3), first principal component removed."""
    def run():
        words = _words(texts)
        return sif(words, _word2vec(words, seed), seed=seed)
    return _timed(run)


def fasttext(texts, seed=0):
    """fastText train_unsupervised, skip-gram, 256 d, 20 epochs, minCount 2, subwords 3-6 (its
    default 2M buckets), one thread; get_sentence_vector of each document. Its Python binding
    takes no seed for this (its own, 0, is used: ``seed`` is ignored)."""
    import fasttext as ft

    def run():
        lines = [" ".join(w) for w in _words(texts)]
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("\n".join(lines) + "\n")
        try:
            m = ft.train_unsupervised(f.name, model="skipgram", dim=DIM, epoch=EPOCHS["fasttext"],
                                      minCount=2, thread=1, verbose=0)  # its seed: 0, fixed
        finally:
            os.unlink(f.name)
        return np.vstack([m.get_sentence_vector(t) for t in lines])
    return _timed(run)


# ---------------------------------------------------------------------------
# sentence-transformers StaticEmbedding + MultipleNegativesRankingLoss on minembed's pairs

def _list_array(ids, starts, lengths):
    """The views ids[starts[j]:starts[j] + lengths[j]] as a pyarrow list array."""
    import pyarrow as pa
    offsets = np.r_[0, np.cumsum(lengths)]
    idx = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(ids[idx]))


def minembed_pairs(corpus=None, seed=0):
    """The pairs `minembed train --members 1 --seed SEED` trains on, batch by batch in its order
    (core/train.py's batches(), as train_loop draws them): (tokenizer, anchors, positives, steps,
    batch size), the views as pyarrow lists of token ids, step s's pairs at rows (s-1)B .. sB-1."""
    import dataclasses

    from minembed import Corpus, TrainConfig
    from minembed.core.pairs import PairSampler
    from minembed.core.train import batches
    from minembed.product.settings import auto_epochs
    cfg = TrainConfig(members=1, seed=seed).resolved()
    source = Corpus(corpus)
    tok = source.tokenizer(cfg.vocab_size)
    sampler = PairSampler(source.tokenized(tok), cfg)
    B = min(cfg.batch_size, len(sampler.usable))
    spe = sampler.steps_per_epoch(B)
    steps = spe * auto_epochs("bag", spe, 1)
    ids, lengths = [], []
    for _, _, v, offsets, _ in batches(sampler, dataclasses.replace(cfg, batch_size=B), 0, steps):
        ids.append(v)
        lengths.append(np.diff(offsets))  # B anchors, then their B positives
    ids, lengths = np.concatenate(ids), np.concatenate(lengths)
    starts = (np.cumsum(lengths) - lengths).reshape(steps, 2, B)
    lengths = lengths.reshape(steps, 2, B)
    return (tok, *(_list_array(ids, starts[:, k].ravel(), lengths[:, k].ravel()) for k in (0, 1)),
            steps, B)


def _static_model(tok, seed):
    """StaticEmbedding (an nn.EmbeddingBag, mean, N(0, 1) start) on minembed's tokenizer, whose
    preprocess also takes lists of token ids (the pairs); texts it tokenises as the library does."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    class IdsStaticEmbedding(StaticEmbedding):
        def preprocess(self, inputs, prompt=None, **kwargs):
            if not inputs or isinstance(inputs[0], str):
                return super().preprocess(inputs, prompt, **kwargs)
            lengths = [len(x) for x in inputs]
            return {"input_ids": torch.tensor([i for x in inputs for i in x], dtype=torch.long),
                    "offsets": torch.from_numpy(np.cumsum([0] + lengths[:-1]))}

    torch.manual_seed(seed)
    return SentenceTransformer(modules=[IdsStaticEmbedding(tok, embedding_dim=DIM)], device="cpu")


def _in_order(dataset, batch_size, drop_last, **kwargs):
    """Batches of consecutive rows (the pairs are already in minembed's order), not shuffled."""
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from torch.utils.data import SequentialSampler
    return DefaultBatchSampler(SequentialSampler(dataset), batch_size=batch_size,
                               drop_last=drop_last, **kwargs)


def static_mnrl(texts, seed=0, corpus=None, lr=None, threads=1):
    """sentence-transformers StaticEmbedding (256 d) trained with MultipleNegativesRankingLoss (its
    scale 20) by SentenceTransformerTrainer, one epoch over minembed's pairs (the same steps, batch
    and pairs as `minembed train --members 1`), lr: the trainer's (5e-5, AdamW, linear decay, no
    warm-up) unless given; ``threads`` torch threads (minembed trains the bag model on one)."""
    import datasets
    import torch
    from sentence_transformers import SentenceTransformerTrainer as Trainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Arguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    torch.set_num_threads(threads)
    tok, anchors, positives, steps, B = minembed_pairs(corpus, seed)
    model = _static_model(tok, seed)
    data = datasets.Dataset(datasets.table.InMemoryTable.from_arrays([anchors, positives],
                                                                      names=["anchor", "positive"]))
    with tempfile.TemporaryDirectory() as tmp:
        args = Arguments(
            output_dir=tmp, num_train_epochs=1, per_device_train_batch_size=B, seed=seed,
            batch_sampler=_in_order, save_strategy="no", report_to="none", disable_tqdm=True,
            logging_steps=max(1, steps // 4), use_cpu=True, dataloader_drop_last=True,
            **({"learning_rate": lr} if lr else {}))
        trainer = Trainer(model=model, args=args, train_dataset=data,
                                             loss=MultipleNegativesRankingLoss(model))
        t = time.perf_counter()
        out = trainer.train()
        seconds = time.perf_counter() - t
    assert out.global_step == steps, (out.global_step, steps)
    return model.encode(texts, batch_size=1024, convert_to_numpy=True), seconds


PEERS = {  # row name -> (what it is, function)
    "tfidf-min_df1": ("TF-IDF, sublinear tf, min_df 1 (every word)", tfidf_min_df1),
    "tfidf-min_df2": ("TF-IDF, sublinear tf, min_df 2 (= the TF-IDF row)", tfidf_min_df2),
    "bm25": ("BM25 weights (k1 1.2, b 0.75), min_df 1", bm25),
    "doc2vec": ("gensim Doc2Vec PV-DBOW + word training, 256 d, 40 epochs", doc2vec),
    "word2vec-mean": ("gensim Word2Vec skip-gram 256 d, 20 epochs: mean of words", word2vec_mean),
    "word2vec-sif": ("gensim Word2Vec, SIF weights (a 1e-3), 1st component removed", word2vec_sif),
    "fasttext": ("fastText skip-gram 256 d, 20 epochs: get_sentence_vector", fasttext),
    "static-mnrl": ("sentence-transformers StaticEmbedding 256 d + MNRL, minembed's pairs and "
                    "steps, trainer defaults (lr 5e-5)", static_mnrl),
    "static-mnrl-lr0.1": ("  the same, lr 0.1 (minembed's; best of 0.01-0.5 on the built-in "
                          "corpus)", functools.partial(static_mnrl, lr=0.1)),
}
