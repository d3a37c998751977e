"""Training end to end: determinism, quality gain, divergence, the model
directory and the Python API."""
import json
import os

import numpy as np
import pytest

import minembed
import minembed.core.train as train_mod
from minembed.errors import MinembedError
from minembed.product.evaluate import knn_accuracy
from minembed.product.files import load_weights
from minembed.product.model import Model
from minembed.product.run import train
from minembed.product.settings import TrainConfig

FAST = dict(dim=32, epochs=2, batch_size=32, vocab_size=500)


def weights(path):
    return load_weights(os.path.join(path, "model.safetensors"))


def test_same_seed_same_model_bit_for_bit(tmp_path, topic_txt):
    a = train(topic_txt, tmp_path / "a", TrainConfig(seed=3, **FAST), quiet=True)
    b = train(topic_txt, tmp_path / "b", TrainConfig(seed=3, **FAST), quiet=True)
    c = train(topic_txt, tmp_path / "c", TrainConfig(seed=4, **FAST), quiet=True)
    wa, wb, wc = weights(a.path), weights(b.path), weights(c.path)
    assert np.array_equal(wa["tok_emb"], wb["tok_emb"])
    assert not np.array_equal(wa["tok_emb"], wc["tok_emb"])
    # the logs agree too, apart from timing
    strip = lambda p: [{k: v for k, v in json.loads(line).items() if k not in ("time", "pairs_per_s")}  # noqa
                       for line in open(os.path.join(p, "log.jsonl"))]
    assert strip(a.path) == strip(b.path)


def test_training_beats_untrained_on_the_builtin_corpus(tmp_path):
    """The issue's quality check on real text, in a small fast configuration."""
    texts, labels = minembed.builtin()
    cfg = TrainConfig(dim=64, epochs=2, batch_size=128, vocab_size=4000)
    model = train(None, tmp_path / "m", cfg, quiet=True)
    untrained = Model(model.config,
                      model.encoder.init_params(model.config, np.random.default_rng([0, 0])),
                      model.tokenizer)
    acc = knn_accuracy(model.encode(texts), labels, metric="cosine")
    acc0 = knn_accuracy(untrained.encode(texts), labels, metric="cosine")
    assert acc > acc0 + 0.05, (acc, acc0)


def test_loss_goes_down_and_log_is_complete(tmp_path, topic_txt):
    m = train(topic_txt, tmp_path / "m", TrainConfig(**dict(FAST, epochs=6)), quiet=True)
    recs = [json.loads(line) for line in open(os.path.join(m.path, "log.jsonl"))]
    assert [r["step"] for r in recs] == list(range(1, len(recs) + 1))
    assert set(recs[0]) >= {"step", "epoch", "loss", "lr", "pairs_per_s"}
    first, last = np.mean([r["loss"] for r in recs[:3]]), np.mean([r["loss"] for r in recs[-3:]])
    assert last < first - 0.3
    cfg = json.load(open(os.path.join(m.path, "config.json")))
    assert cfg["model"] == "bag" and cfg["training"]["steps"] == len(recs)
    assert cfg["corpus"]["documents"] == 240


def test_divergence_stops_and_leaves_no_model(tmp_path, topic_txt, monkeypatch):
    """A diverged run is a failed run: no model (once it saved "the last good weights", a model
    that load() accepted), and no checkpoint that leads back to the divergence."""
    cfg = TrainConfig(max_steps=5, **FAST)
    real_loss, n_loss = train_mod.contrastive_loss, [0]

    def nan_at_step_3(*a, **kw):
        n_loss[0] += 1
        loss, accuracy, demb = real_loss(*a, **kw)
        return (float("nan") if n_loss[0] == 3 else loss), accuracy, demb

    monkeypatch.setattr(train_mod, "contrastive_loss", nan_at_step_3)
    with pytest.raises(MinembedError, match="diverged.*nan at step 3.*no model was saved.*--lr"):
        train(topic_txt, tmp_path / "bad", cfg, quiet=True, checkpoint_every=2)
    assert not (tmp_path / "bad").exists()
    (tmp_path / "mine").mkdir()                         # a directory the user made: kept, empty
    n_loss[0] = 0
    with pytest.raises(MinembedError, match="diverged"):
        train(topic_txt, tmp_path / "mine", cfg, quiet=True, checkpoint_every=2)
    assert os.listdir(tmp_path / "mine") == []


def test_load_and_encode(tmp_path, topic_txt, topic_docs):
    train(topic_txt, tmp_path / "m", TrainConfig(**FAST), quiet=True)
    model = minembed.load(tmp_path / "m")
    texts = topic_docs[0][:10] + ["", "star planet"]
    X = model.encode(texts, batch_size=3)
    assert X.shape == (12, 32) and X.dtype == np.float32
    assert np.all(X[10] == 0)  # an empty text: a zero vector
    # batching and order do not change a text's vector
    np.testing.assert_allclose(model.encode([texts[4]])[0], X[4], rtol=1e-5, atol=1e-6)
    Xn = model.encode(texts, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(Xn[:10], axis=1), 1.0, rtol=1e-5)
    # one string: one vector, as sentence-transformers
    v = model.encode("star planet")
    assert v.shape == (32,)
    np.testing.assert_allclose(v, X[11], rtol=1e-5, atol=1e-6)
    for bad, msg in ((None, "string or a list"), ([None], "text 0 is a NoneType"),
                     (["ok", 123], "text 1 is a int"), (["a"], None)):
        if msg is None:
            continue
        with pytest.raises(MinembedError, match=msg):
            model.encode(bad)


def test_sublinear_pooling_changes_encoding_only(tmp_path, topic_txt, topic_docs):
    a = train(topic_txt, tmp_path / "a", TrainConfig(**FAST), quiet=True)
    b = train(topic_txt, tmp_path / "b", TrainConfig(pooling="sublinear", **FAST), quiet=True)
    assert "pooling" not in a.config and b.config["pooling"] == "sublinear"
    table = weights(b.path)["tok_emb"]
    assert np.array_equal(weights(a.path)["tok_emb"], table)  # training counts n either way
    b = minembed.load(b.path)
    texts = ["star star star planet", "planet orbit", ""] + topic_docs[0][:5]
    X, Y = a.encode(texts), b.encode(texts)
    ids = [b.tokenizer.encode(t).ids for t in texts[:2]]
    for i, t in enumerate(ids):
        u, n = np.unique(t, return_counts=True)
        want = ((1 + np.log(n))[:, None] * table[u]).sum(axis=0) / (1 + np.log(n)).sum()
        np.testing.assert_allclose(Y[i], want / np.linalg.norm(want), rtol=1e-5, atol=1e-6)
    # a repeated token: different vectors
    assert np.all(Y[2] == 0) and np.abs(X[0] @ Y[0]) < 1 - 1e-4
    assert minembed.load(b.path).config["pooling"] == "sublinear"


def test_output_dir_is_not_overwritten_without_force(tmp_path, topic_txt):
    train(topic_txt, tmp_path / "m", TrainConfig(max_steps=2, **FAST), quiet=True)
    before = weights(tmp_path / "m")["tok_emb"]
    with pytest.raises(MinembedError, match="already holds a model.*--force"):
        train(topic_txt, tmp_path / "m", TrainConfig(seed=1, **FAST), quiet=True)
    assert np.array_equal(before, weights(tmp_path / "m")["tok_emb"])
    train(topic_txt, tmp_path / "m", TrainConfig(seed=1, max_steps=2, **FAST),
          quiet=True, force=True)
    assert not np.array_equal(before, weights(tmp_path / "m")["tok_emb"])


def test_crash_during_save_leaves_the_old_model_intact(tmp_path, topic_txt, monkeypatch):
    train(topic_txt, tmp_path / "m", TrainConfig(max_steps=2, **FAST), quiet=True)
    before = weights(tmp_path / "m")["tok_emb"]
    import minembed.product.files as model_mod
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith("model.safetensors"):
            raise OSError("disk full (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(model_mod.os, "replace", crash)
    with pytest.raises(MinembedError,
                       match=r"cannot write \S*/m/model.safetensors: disk full") as e:
        train(topic_txt, tmp_path / "m", TrainConfig(seed=9, max_steps=2, **FAST),
              quiet=True, force=True)
    assert ".tmp" not in str(e.value)
    monkeypatch.setattr(model_mod.os, "replace", real_replace)
    # no temporary file left behind, and the weights on disk are the old ones, whole
    assert not [f for f in os.listdir(tmp_path / "m") if f.endswith(".tmp")]
    assert np.array_equal(before, weights(tmp_path / "m")["tok_emb"])


def test_the_bag_model_is_four_members_of_a_quarter_of_dim_each_with_half_the_epochs():
    """The default bag model: 4 tables of dim / 4 (1 with --matryoshka; the transformer 1), each
    trained 20 epochs within 400-2,500 steps where one table gets 40 within 800-5,000."""
    from minembed.product.settings import auto_epochs
    assert TrainConfig().resolved().members == 4 and TrainConfig(dim=64).resolved().members == 4
    assert TrainConfig(matryoshka="32").resolved().members == 1
    assert TrainConfig(model="transformer").resolved().members == 1
    assert [auto_epochs("bag", spe, 4) for spe in (10, 75, 200)] == [40, 20, 13]
    assert [auto_epochs("bag", spe, 1) for spe in (10, 75, 200)] == [80, 40, 25]


@pytest.mark.parametrize("kw, msg", [
    (dict(lr=0.0), "--lr"), (dict(lr=-1.0), "--lr"), (dict(batch_size=1), "--batch-size"),
    (dict(dim=0), "--dim"), (dict(epochs=0), "--epochs"), (dict(model="lstm"), "--model"),
    (dict(positives="dropout"), "dropout needs an encoder with dropout"),
    (dict(model="transformer", dim=30, heads=4), "multiple of --heads"),
    (dict(matryoshka="8,64", dim=32), "--matryoshka.*from 1 to --dim \\(32\\)"),
    (dict(model="transformer", pooling="sublinear"), "--pooling sublinear is for the bag model"),
    (dict(model="transformer", members=2), "--members is for the bag model"),
    (dict(members=2, matryoshka="8"), "not with --matryoshka"),
    (dict(members=0), "--members must be positive"),
    (dict(matryoshka="0,8"), "--matryoshka"), (dict(matryoshka="8,x"), "--matryoshka"),
    (dict(dim=30), "--dim 30 is not a multiple of --members 4"),
])
def test_invalid_settings(tmp_path, topic_txt, kw, msg):
    with pytest.raises(MinembedError, match=msg):
        train(topic_txt, tmp_path / "m", TrainConfig(**kw), quiet=True)
    assert not (tmp_path / "m").exists()


def test_too_few_documents_for_a_batch(tmp_path):
    p = tmp_path / "small.txt"
    p.write_text("\n".join(f"document number {i} has a few words in it." for i in range(10)))
    m = train(str(p), tmp_path / "m", TrainConfig(vocab_size=100, max_steps=3), quiet=True)
    assert m.config["training"]["batch_size"] == 10  # lowered to fit the 10 documents


def test_matryoshka_training_makes_prefixes_embeddings(tmp_path, topic_txt, topic_docs):
    """--matryoshka 4: the first 4 dimensions, renormalised, classify the topics as well
    as the full vectors do, and clearly better than the first 4 of a model trained at
    32 alone (same seed); config.json records the trained dimensions."""
    texts, labels = topic_docs
    # crops at scale 20, subword tokens: with rest positives, at scale 10 or with words as
    # tokens every 4-dim prefix of this easy corpus works
    cfg = dict(FAST, epochs=6, seed=1, scale=20.0, positives="crops", span_max=0.5,
               tokens="subwords")
    # one 32-wide table
    plain = train(topic_txt, tmp_path / "plain", TrainConfig(members=1, **cfg), quiet=True)
    mat = train(topic_txt, tmp_path / "mat", TrainConfig(matryoshka="4", **cfg), quiet=True)
    assert mat.config["matryoshka"] == [4, 32] and mat.config["training"]["matryoshka"] == "4,32"
    assert "matryoshka" not in plain.config
    knn = lambda m, k: np.mean([knn_accuracy(m.encode(texts, dim=k), labels, metric="cosine", seed=s)  # noqa
                                for s in range(5)])
    with pytest.warns(UserWarning, match="trained at dimension 32, not 4"):
        plain4 = knn(plain, 4)
    mat4 = knn(mat, 4)
    assert mat4 >= 0.97 and mat4 > plain4 + 0.05, (mat4, plain4)
    # dim=k is the renormalised prefix of the raw vectors
    raw = mat.encode(texts[:5], normalize=False)
    want = raw[:, :4] / np.linalg.norm(raw[:, :4], axis=1, keepdims=True)
    np.testing.assert_allclose(mat.encode(texts[:5], dim=4), want, rtol=1e-5, atol=1e-6)
    assert mat.encode("star planet", dim=4).shape == (4,)
    for bad in (0, 33, 2.5, True):
        with pytest.raises(MinembedError, match="dim must be an integer from 1 to 32"):
            mat.encode(["x"], dim=bad)


TINY_TF = dict(model="transformer", dim=32, layers=1, heads=2, ffn=64, max_len=32, batch_size=16,
               vocab_size=400, max_steps=2)


def test_transformer_token_table_from_a_bag_model(tmp_path, topic_txt, capsys):
    """The transformer starts from a bag model's table (scaled to std 0.02): the mean of its
    rows already embeds the built-in corpus's documents by topic, where a random table's does
    not; with dropout positives (no crops to learn from) the table starts random."""
    texts, labels = minembed.builtin()

    def initial_table(**kw):  # lr ~0: the table as the transformer's training found it
        m = train(None, tmp_path / str(len(kw)),
                  TrainConfig(**dict(TINY_TF, vocab_size=2000, lr=1e-12, **kw)),
                  quiet=True)
        table = weights(m.path)["tok_emb"]
        bag = Model(dict(model="bag", vocab_size=2000, dim=32, normalize=True), {"tok_emb": table},
                    m.tokenizer)
        return table, knn_accuracy(bag.encode(texts), labels, metric="cosine")

    (table, acc), (_, acc0) = initial_table(), initial_table(bag_init=False)
    assert abs(table.std() - 0.02) < 1e-3
    assert acc > acc0 + 0.1, (acc, acc0)
    # ... and starts as that bag model: blocks the identity (output projections 0), positions small
    w, w0 = weights(tmp_path / "0"), weights(tmp_path / "1")
    for k in ("blocks.0.attn.out.w", "blocks.0.mlp.proj.w"):
        assert np.abs(w[k]).max() < 1e-9 and np.abs(w0[k]).std() > 1e-3, k
    assert abs(w["pos_emb"].std() - 0.002) < 3e-4 and abs(w0["pos_emb"].std() - 0.02) < 3e-3
    lrs = [train(None, tmp_path / f"lr{i}", TrainConfig(**dict(TINY_TF, vocab_size=2000, **kw)),
                 quiet=True).config["training"]["lr"]
           for i, kw in enumerate([{}, dict(bag_init=False), dict(lr=1e-3)])]
    assert lrs == [3e-5, 5e-4, 1e-3]  # the default lr refines a bag table; from scratch it is 5e-4
    m = train(topic_txt, tmp_path / "d", TrainConfig(**TINY_TF, positives="dropout"))
    assert "--positives dropout: the token table starts random" in capsys.readouterr().err
    assert m.config["training"]["bag_init"] is False
