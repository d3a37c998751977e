"""Models and vectors out of minembed: exports that model2vec and sentence-transformers
load with the same vectors, quantised output, and streaming `embed` with bounded memory."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from minembed.product import export as ex
from minembed.product.cli import main
from minembed.product.modeldir import load, save_model
from minembed.product.tokenize import train_tokenizer

# texts whose tokens the tokenizer knows: equal vectors in every library; an empty text
# is a zero vector everywhere
EDGE = ["", "   ", "STAR Planet, orbit!", "[MASK] the [PAD] comet", "tab\tsep  spaces", "x",
        " ".join(["guitar"] * 30), "Stàr plànet orbít"]
UNK = ["star \u2603 planet", "\u2603"]   # a snowman: a character the tokenizer never saw


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, topic_docs):
    """A bag model with a random table (std 1: vectors far from each other), the
    tokenizer trained on the topic documents, dims 8 and 32 marked as trained."""
    tok = train_tokenizer(topic_docs[0] + EDGE, vocab_size=300)
    config = {"model": "bag", "vocab_size": tok.get_vocab_size(), "dim": 32, "normalize": True,
              "matryoshka": [8, 32]}
    table = np.random.default_rng(0).standard_normal((tok.get_vocab_size(), 32)).astype(np.float32)
    path = tmp_path_factory.mktemp("export") / "model"
    save_model(str(path), config, {"tok_emb": table}, tok)
    return path


@pytest.fixture(scope="module")
def texts(topic_docs):
    return topic_docs[0][:100] + EDGE


def test_model2vec_loads_the_export_with_the_same_vectors(tmp_path, model_dir, texts):
    from model2vec import StaticModel
    model = load(model_dir)
    unk = model.tokenizer.token_to_id("[UNK]")
    assert not any(unk in model.tokenizer.encode(t, add_special_tokens=False).ids for t in texts)
    r = run("export", model_dir, "--to", "model2vec", tmp_path / "m2v")
    assert r.exit_code == 0, r.output
    assert set(os.listdir(tmp_path / "m2v")) == {"model.safetensors", "tokenizer.json",
                                                 "config.json", "README.md"}
    m2v = StaticModel.from_pretrained(str(tmp_path / "m2v"))
    X, Y = model.encode(texts), m2v.encode(texts)
    assert Y.shape == X.shape == (len(texts), 32)
    np.testing.assert_allclose(Y, X, rtol=0, atol=1e-6)
    assert np.all(Y[100] == 0) and np.all(X[100] == 0)           # the empty text: zero vectors
    np.testing.assert_allclose(m2v.encode(texts[2]), X[2], atol=1e-6)  # one string: one vector
    # Matryoshka: model2vec's dimensionality=k is encode(dim=k)
    m8 = StaticModel.from_pretrained(str(tmp_path / "m2v"), dimensionality=8)
    np.testing.assert_allclose(m8.encode(texts), model.encode(texts, dim=8), rtol=0, atol=1e-6)
    # the documented difference: model2vec drops [UNK] tokens before averaging
    table = model.params["tok_emb"]
    for text, x, y in zip(UNK, model.encode(UNK), m2v.encode(UNK)):
        ids = model.tokenizer.encode(text, add_special_tokens=False).ids
        assert unk in ids
        known = table[[i for i in ids if i != unk]].mean(axis=0)
        np.testing.assert_allclose(y, known / np.linalg.norm(known), atol=1e-6)
        assert np.abs(x - y).max() > 1e-2


def test_sentence_transformers_loads_the_export_with_the_same_vectors(tmp_path, model_dir, texts):
    st = pytest.importorskip("sentence_transformers")
    model = load(model_dir)
    files = ex.export(model, "sentence-transformers", str(tmp_path / "st"))
    assert "modules.json" in files and "0_StaticEmbedding/model.safetensors" in files
    m = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    X = model.encode(texts + UNK)
    Y = m.encode(texts + UNK, batch_size=16)
    np.testing.assert_allclose(Y, X, rtol=0, atol=1e-6)          # [UNK] and empty texts included
    assert np.all(Y[100] == 0)
    Y8 = m.encode(texts, normalize_embeddings=True, truncate_dim=8)
    np.testing.assert_allclose(Y8, model.encode(texts, dim=8), rtol=0, atol=1e-6)


def test_export_refuses_what_it_cannot_do(tmp_path, model_dir, topic_txt):
    r = run("export", model_dir, "--to", "model2vec", model_dir)           # a model directory
    assert r.exit_code == 1 and "Error: " in r.output and "neither an empty directory" in r.output
    assert load(model_dir).dim == 32                                        # untouched
    assert run("export", model_dir, "--to", "model2vec", tmp_path / "e").exit_code == 0
    r = run("export", model_dir, "--to", "sentence-transformers", tmp_path / "e")
    assert r.exit_code == 1 and "--force replaces it" in r.output
    r = run("export", model_dir, "--to", "sentence-transformers", tmp_path / "e", "--force")
    # the old one is gone
    assert r.exit_code == 0 and "config.json" not in os.listdir(tmp_path / "e")
    r = run("export", model_dir, "--to", "onnx", tmp_path / "f")
    assert r.exit_code == 2 and "onnx" in r.output
    t = run("train", topic_txt, "-o", tmp_path / "t", "--model", "transformer", "--dim", "8",
            "--heads", "2", "--layers", "1", "--ffn", "16", "--vocab-size", "100",
            "--max-steps", "1", "-q")
    assert t.exit_code == 0, t.output
    r = run("export", tmp_path / "t", "--to", "model2vec", tmp_path / "g")
    assert r.exit_code == 1 and "only the bag model" in r.output and "Traceback" not in r.output
    t = run("train", topic_txt, "-o", tmp_path / "s", "--pooling", "sublinear", "--dim", "8",
            "--vocab-size", "100", "--max-steps", "1", "-q")
    assert t.exit_code == 0, t.output
    r = run("export", tmp_path / "s", "--to", "sentence-transformers", tmp_path / "h")
    assert r.exit_code == 1 and "pools sublinearly" in r.output and not (tmp_path / "h").exists()


def test_quantize_and_dequantize():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 20)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    scales = np.abs(X).max(axis=0)
    q = ex.quantize(X, "int8", scales)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    assert np.abs(ex.dequantize(q, "int8", scales) - X).max() <= scales.max() / 254 + 1e-7
    assert np.all(ex.quantize(2 * X, "int8", scales)
                  == np.clip(np.rint(254 * X / scales), -127, 127))
    b = ex.quantize(X, "binary")
    assert b.dtype == np.uint8 and b.shape == (50, 3)
    assert np.array_equal(ex.dequantize(b, "binary", dim=20), np.where(X > 0, 1, -1))
    h = ex.quantize(X, "float16")
    assert h.dtype == np.float16 and np.abs(h - X).max() < 1e-3


def test_embed_streams_to_npy_with_dims_and_dtypes(tmp_path, model_dir, topic_docs):
    model = load(model_dir)
    texts = topic_docs[0]
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(texts) + "\n")
    X = model.encode(texts)
    for args, want in (((), X), (("--dim", "8"), model.encode(texts, dim=8))):
        r = run("embed", model_dir, path, "-o", tmp_path / "x.npy", "-q", *args)
        assert r.exit_code == 0, r.output
        Y = np.load(tmp_path / "x.npy", mmap_mode="r")
        assert Y.dtype == np.float32 and Y.shape == want.shape
        np.testing.assert_array_equal(Y, want)   # chunked: the same vectors
    r = run("embed", model_dir, path, "-o", tmp_path / "h.npy", "--dtype", "float16", "-q")
    assert r.exit_code == 0 and np.array_equal(np.load(tmp_path / "h.npy"), X.astype(np.float16))
    r = run("embed", model_dir, path, "-o", tmp_path / "b.npy", "--dtype", "binary",
            "--dim", "8", "-q")
    assert r.exit_code == 0
    assert np.array_equal(np.load(tmp_path / "b.npy"),
                          np.packbits(model.encode(texts, dim=8) > 0, axis=1))
    # int8 needs the scales of `minembed quantize`, stored in the model directory
    r = run("embed", model_dir, path, "-o", tmp_path / "q.npy", "--dtype", "int8")
    assert (r.exit_code == 1 and "minembed quantize" in r.output
            and not (tmp_path / "q.npy").exists())
    r = run("quantize", model_dir, path, "--max-docs", "100")
    assert r.exit_code == 0, r.output
    stored = json.load(open(model_dir / "int8_scales.json"))
    assert stored["documents"] == 100 and sorted(stored["scales"], key=int) == ["8", "32"]
    assert "int8_scales.json" in json.load(open(model_dir / "manifest.json"))["files"]
    model = load(model_dir)                        # the manifest covers the scales
    s32 = ex.int8_scales(model, 32)
    np.testing.assert_allclose(s32, np.abs(X[:100]).max(axis=0), rtol=1e-6)
    r = run("embed", model_dir, path, "-o", tmp_path / "q.npy", "--dtype", "int8", "-q")
    assert r.exit_code == 0, r.output
    Q = np.load(tmp_path / "q.npy")
    assert Q.dtype == np.int8 and np.array_equal(Q, ex.quantize(X, "int8", s32))
    with pytest.warns(UserWarning, match="not 16"):
        r = run("embed", model_dir, path, "-o", tmp_path / "q.npy", "--dtype", "int8",
                "--dim", "16")
    assert r.exit_code == 1 and "quantize" in r.output and "--dim 16" in r.output
    # errors: one line, and no file left behind
    for args, msg in ((("--dim", "33"), "from 1 to 32"),
                      (("--dtype", "int8", "--no-normalize"), "unit vectors"),
                      (("--dtype", "int4"), "'int4' is not one of")):
        r = run("embed", model_dir, path, "-o", tmp_path / "bad.npy", *args)
        assert r.exit_code in (1, 2) and msg in r.output.strip().splitlines()[-1], r.output
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".") or f == "bad.npy"]
    (tmp_path / "blank.txt").write_text("\n \n")      # two lines, both empty: two rows of zeros
    r = run("embed", model_dir, tmp_path / "blank.txt", "-o", tmp_path / "blank.npy")
    assert r.exit_code == 0 and "2 empty" in r.output
    blank = np.load(tmp_path / "blank.npy")
    assert blank.shape == (2, 32) and not blank.any()
    (tmp_path / "blank.txt").write_text("\n \n")
    r = run("embed", model_dir, tmp_path / "blank.txt", "-o", tmp_path / "bad.npy", "--format",
            "paragraphs")
    assert r.exit_code == 1 and "no documents" in r.output
    # a model trained again in the same directory loses the stale scales
    save_model(str(model_dir), model.config, model.params, model.tokenizer)
    assert not (model_dir / "int8_scales.json").exists() and load(model_dir).dim == 32


def test_embed_warns_on_a_dimension_the_model_was_not_trained_at(tmp_path, model_dir, topic_txt):
    import warnings
    with pytest.warns(UserWarning, match="trained at dimensions 8, 32, not 4") as caught:
        r = run("embed", model_dir, topic_txt, "-o", tmp_path / "x.npy", "--dim", "4", "-q")
    assert r.exit_code == 0 and len(caught) == 1                 # once, not once per chunk
    # the CLI's one line
    assert warnings.formatwarning("m", UserWarning, "f.py", 1) == "Warning: m\n"
    assert np.load(tmp_path / "x.npy").shape == (240, 4)


_RSS = """
import sys
from minembed.product.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
# the peak resident memory of this process (VmHWM; ru_maxrss would count the parent's at fork)
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_embed_memory_does_not_grow_with_the_input(tmp_path, model_dir, topic_docs):
    """Peak RSS embedding 40,000 documents (~33 MB of text) is within 10 MB of embedding
    8,192 (two chunks): the input is streamed and the rows written as they come (read
    whole, as `embed` did before, the 40,000 texts add ~37 MB). The tokenizer on one thread and
    glibc on one arena: with threads, how much memory their arenas hold varied by 15 MB from
    run to run on a busy machine, which once failed this test."""
    texts = topic_docs[0]
    rss = {}
    for n in (8192, 40000):
        path = tmp_path / f"{n}.txt"
        path.write_text("\n".join(texts[i % len(texts)] for i in range(n)) + "\n")
        out = subprocess.run([sys.executable, "-c", _RSS, "embed", str(model_dir), str(path), "-o",
                              str(tmp_path / f"{n}.npy"), "-q"], capture_output=True,
                             text=True, check=True, env=dict(os.environ, MALLOC_ARENA_MAX="1",
                                                             TOKENIZERS_PARALLELISM="false"))
        rss[n] = int(out.stdout.split()[-1]) / 1024
        assert np.load(tmp_path / f"{n}.npy", mmap_mode="r").shape == (n, 32)
    assert os.path.getsize(tmp_path / "40000.txt") > 30e6
    assert rss[40000] - rss[8192] < 10, rss
