"""A model directory's manifest: ``load`` names the file that is missing or damaged."""
import json
import os
import shutil

import numpy as np
import pytest

from minembed.core import bag
from minembed.errors import MinembedError
from minembed.product.modeldir import MODEL_FILES, load, save_model
from minembed.product.tokenize import train_tokenizer

TEXTS = ["the quick brown fox jumps over the lazy dog", "a model directory has a manifest",
         "every file is checked against its size and checksum"] * 5


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    tok = train_tokenizer(TEXTS, vocab_size=64)
    config = {"model": "bag", "vocab_size": tok.get_vocab_size(), "dim": 8}
    path = tmp_path_factory.mktemp("m") / "model"
    save_model(str(path), config, bag.init_params(config, np.random.default_rng(0)), tok)
    return path


@pytest.fixture
def model(good_model, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(good_model, path)
    return path


def test_intact_model_loads(model):
    m = load(model)
    assert m.encode(["a fox"]).shape == (1, 8)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_missing_file(model, name):
    os.unlink(model / name)
    with pytest.raises(MinembedError, match=f"{name} is missing"):
        load(model)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_truncated_file(model, name):
    data = (model / name).read_bytes()
    (model / name).write_bytes(data[:len(data) // 2])
    with pytest.raises(MinembedError, match=f"{name} has {len(data) // 2} bytes, the manifest says "
                                            f"{len(data)} \\(truncated"):
        load(model)


@pytest.mark.parametrize("name", MODEL_FILES)
@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_flipped_byte(model, name, where):
    data = bytearray((model / name).read_bytes())
    i = int(where * len(data)) if where >= 0 else len(data) - 1
    data[i] ^= 0x01
    (model / name).write_bytes(bytes(data))
    with pytest.raises(MinembedError, match=f"{name} does not match its checksum"):
        load(model)


def test_missing_manifest(model):
    os.unlink(model / "manifest.json")
    with pytest.raises(MinembedError, match="manifest.json is missing"):
        load(model)


@pytest.mark.parametrize("text", ['{"files": {"config.json": ', "", "\x00\xff\xfe", "[]", "null",
                                  '{"files": 3}', '{"files": []}', '{"nope": {}}',
                                  '{"files": {"model.safetensors": {}}}',
                                  '{"files": {"model.safetensors": {"size": "x", "sha256": "0"}}}'])
def test_damaged_manifest_json(model, text):
    (model / "manifest.json").write_bytes(text.encode("utf-8"))
    with pytest.raises(MinembedError, match="manifest.json is damaged"):
        load(model)


def test_manifest_that_omits_a_file(model):
    m = json.loads((model / "manifest.json").read_text())
    del m["files"]["model.safetensors"]
    (model / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(MinembedError, match="does not list model.safetensors"):
        load(model)


def test_damaged_config_with_matching_manifest(model):
    """A config.json rewritten with its manifest entry (so checksums pass) but not JSON."""
    import hashlib
    (model / "config.json").write_text("{not json")
    m = json.loads((model / "manifest.json").read_text())
    data = (model / "config.json").read_bytes()
    m["files"]["config.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (model / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(MinembedError, match="config.json is unreadable or damaged"):
        load(model)


def test_legacy_npz_model_directory_loads_and_encodes(tmp_path):
    """A directory written before safetensors (config.json, tokenizer.json, model.npz,
    a manifest listing model.npz), made by hand, still loads and encodes: its vectors
    are the mean of the token rows, normalised."""
    tok = train_tokenizer(TEXTS, vocab_size=64)
    config = {"model": "bag", "vocab_size": tok.get_vocab_size(), "dim": 8, "normalize": True}
    table = np.random.default_rng(3).standard_normal((tok.get_vocab_size(), 8)).astype(np.float32)
    d = tmp_path / "old"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    (d / "tokenizer.json").write_text(tok.to_str())
    np.savez(d / "model.npz", tok_emb=table)
    from minembed.product.modeldir import write_manifest
    write_manifest(str(d), ("config.json", "tokenizer.json", "model.npz"))
    assert "model.safetensors" not in os.listdir(d)
    m = load(d)
    assert np.array_equal(m.params["tok_emb"], table)
    ids = tok.encode("a lazy fox", add_special_tokens=False).ids
    want = table[ids].mean(axis=0)
    np.testing.assert_allclose(m.encode("a lazy fox"), want / np.linalg.norm(want), atol=1e-6)
    with open(d / "model.npz", "r+b") as f:  # and the manifest still guards it
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(MinembedError, match="model.npz"):
        load(d)
