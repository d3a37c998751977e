"""The command line: the happy path, complete help, and one clear line (never
a traceback) with a non-zero exit for every bad input the issue lists."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from minembed.product.cli import main

SMALL = ["--dim", "16", "--vocab-size", "300", "--batch-size", "16", "--epochs", "1", "-q"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    # progress messages may come first; the error is one line, the last
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    for f in fragments:
        assert f in errors[0], (f, errors[0])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, topic_txt):
    out = tmp_path_factory.mktemp("cli") / "model"
    r = run("train", topic_txt, "-o", out, *SMALL)
    assert r.exit_code == 0, r.output
    return out


def test_help_is_complete():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("train", "embed", "eval"):
        assert cmd in r.output
        h = run(cmd, "--help")
        assert h.exit_code == 0 and "Usage:" in h.output
    h = run("train", "--help").output
    for opt in ("--model", "--epochs", "--batch-size", "--lr", "--seed", "--scale", "--dim",
                "--symmetric", "--format", "--tokenizer", "--vocab-size", "--crops", "--positives",
                "--quiet", "--force"):
        assert opt in h


def test_train_embed_eval(tmp_path, model_dir, topic_txt, topic_jsonl):
    assert set(os.listdir(model_dir)) >= {"config.json", "tokenizer.json", "model.safetensors",
                                          "log.jsonl", "manifest.json"}
    out = tmp_path / "x.npy"
    r = run("embed", model_dir, topic_txt, "-o", out)
    assert r.exit_code == 0, r.output
    X = np.load(out, allow_pickle=False)
    assert X.shape == (240, 16) and X.dtype == np.float32
    r = run("eval", model_dir, topic_jsonl, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["documents"] == 240 and res["labels"] == 4
    assert set(res["knn"]) == {"model", "untrained", "tfidf", "tfidf_svd_l2", "majority"}
    for row in res["knn"].values():
        assert 0.0 <= row["knn_euclidean"] <= 1.0 and 0.0 <= row["knn_cosine"] <= 1.0
    assert res["knn"]["majority"]["knn_cosine"] < 0.5 < res["knn"]["tfidf"]["knn_cosine"]
    for row in (res["retrieval"]["model"], res["retrieval"]["tfidf"]):
        assert 0.0 <= row["recall@1"] <= row["recall@10"] <= 1.0 and row["documents"] == 240
    r = run("eval", model_dir, topic_jsonl)
    assert r.exit_code == 0 and "tfidf_svd_l2" in r.output and "%" in r.output


def test_paragraph_and_gzip_corpora_train(tmp_path, topic_docs):
    import gzip
    p = tmp_path / "c.txt.gz"
    with gzip.open(p, "wt") as f:
        f.write("\n\n".join(t.replace(". ", ".\n") for t in topic_docs[0]))
    r = run("train", p, "--format", "paragraphs", "-o", tmp_path / "m", *SMALL)
    assert r.exit_code == 0, r.output
    cfg = json.load(open(tmp_path / "m" / "config.json"))
    assert cfg["corpus"]["documents"] == 240


def test_existing_tokenizer_is_used(tmp_path, model_dir, topic_txt):
    r = run("train", topic_txt, "--tokenizer", model_dir / "tokenizer.json", "-o",
            tmp_path / "m", *SMALL)
    assert r.exit_code == 0, r.output
    assert ((tmp_path / "m" / "tokenizer.json").read_text()
            == (model_dir / "tokenizer.json").read_text())


# --- bad input ---------------------------------------------------------------

def test_missing_corpus(tmp_path):
    assert_one_line_error(run("train", tmp_path / "nope.txt", "-o", tmp_path / "m"), "not found")


def test_empty_corpus(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("")
    assert_one_line_error(run("train", p, "-o", tmp_path / "m"), "empty")
    p.write_text("\n  \n\n")
    assert_one_line_error(run("train", p, "-o", tmp_path / "m2", *SMALL), "no documents")


def test_too_few_documents(tmp_path):
    p = tmp_path / "few.txt"
    p.write_text("one document here.\nand a second one.\n")
    r = run("train", p, "-o", tmp_path / "m", "--vocab-size", "100", "--max-steps", "3")
    assert r.exit_code == 0 and "batch size lowered from 128 to 2" in r.output, r.output
    p.write_text("only one document here.\n")
    assert_one_line_error(run("train", p, "-o", tmp_path / "m1", "--vocab-size", "100"),
                          "at least 2")
    assert not (tmp_path / "m1").exists()


def test_binary_and_non_utf8(tmp_path):
    p = tmp_path / "bin.txt"
    p.write_bytes(os.urandom(3000) + b"\x00\x00")
    r = run("train", p, "-o", tmp_path / "m")
    assert_one_line_error(r)
    assert "UTF-8" in r.output or "binary" in r.output
    p.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert_one_line_error(run("train", p, "-o", tmp_path / "m2"), "not valid UTF-8")


def test_line_of_many_megabytes(tmp_path):
    p = tmp_path / "big.txt"
    p.write_bytes(b"word " * 1_200_000 + b"\n")
    assert_one_line_error(run("train", p, "-o", tmp_path / "m"), "longer than 1,000,000 characters")


def test_bad_model_dirs(tmp_path, model_dir, topic_txt):
    assert_one_line_error(run("embed", tmp_path / "nope", topic_txt, "-o", tmp_path / "x.npy"),
                          "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run("embed", empty, topic_txt, "-o", tmp_path / "x.npy"), "does not hold")
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    assert_one_line_error(run("eval", bad, topic_txt), "model.safetensors", "corrupted")
    (bad / "model.safetensors").write_bytes(bytes(data[:100]))
    assert_one_line_error(run("embed", bad, topic_txt, "-o", tmp_path / "x.npy"),
                          "model.safetensors")
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--lr", "0"], "--lr"), (["--lr", "-0.1"], "--lr"), (["--batch-size", "1"], "--batch-size"),
    (["--dim", "0"], "--dim"), (["--epochs", "0"], "--epochs"), (["--lr", "nan"], "--lr"),
    (["--positives", "dropout"], "dropout"),
])
def test_invalid_numbers(tmp_path, topic_txt, args, fragment):
    assert_one_line_error(run("train", topic_txt, "-o", tmp_path / "m", *args), fragment)


def test_refuses_to_overwrite_a_model(model_dir, topic_txt):
    before = (model_dir / "model.safetensors").read_bytes()
    assert_one_line_error(run("train", topic_txt, "-o", model_dir, *SMALL),
                          "already holds a model", "--force")
    assert (model_dir / "model.safetensors").read_bytes() == before


def test_eval_without_labels_reports_retrieval(model_dir, topic_txt):
    r = run("eval", model_dir, topic_txt)
    assert r.exit_code == 0, r.output
    assert ("retrieval of a held-out crop (240 documents; a quarter of each document's words)"
            in r.output and "tfidf_svd_l2" not in r.output)
