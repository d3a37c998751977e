"""Trust: no output that silently means something else, no traceback, no work wasted on an
option or an output that was wrong from the start, nothing left behind. Each case here was
found by trying the tool as a new user would, and failed before it was fixed."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import settings

import minembed
from minembed.product.cli import main
from minembed.product.corpus import cache_subdir, remove_stale
from minembed.product.modeldir import write_manifest
from test_first_hour import one_line_error

TINY = ["--members", "1", "--dim", "16", "--vocab-size", "300", "--batch-size", "16"]


def run(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def cli(*args, env=None, **kw):
    """The CLI in a subprocess (stderr a pipe, not a terminal)."""
    return subprocess.run([sys.executable, "-m", "minembed", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, **(env or {})), **kw)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, topic_txt):
    out = tmp_path_factory.mktemp("trust") / "model"
    r = run("train", topic_txt, "-o", out, "-q", *TINY, "--max-steps", "5")
    assert r.exit_code == 0, r.output
    return out


# silent wrong output -----------------------------------------------------------------------------

def test_embed_gives_one_row_per_line_blank_lines_included(tmp_path, model_dir):
    (tmp_path / "g.txt").write_text("a b\n\nc d\n   \ne f\n")
    r = cli("embed", model_dir, tmp_path / "g.txt", "-o", tmp_path / "g.npy")
    assert r.returncode == 0, r.stderr
    X = np.load(tmp_path / "g.npy")
    want = minembed.load(model_dir).encode(["a b", "", "c d", "", "e f"])
    assert X.shape == (5, 16)                     # before: 3 rows for 5 lines
    np.testing.assert_array_equal(X, want)
    assert not X[1].any() and not X[3].any()      # encode("") is zeros
    assert "5 x 16" in r.stderr and "2 empty" in r.stderr


def test_a_run_whose_vectors_broke_fails_and_leaves_no_model(tmp_path, topic_txt):
    """lr 1e30: weights of 3e30, finite, but their squared norms overflow float32 and every
    vector normalises to 0; it ended with "model saved" and exit 0."""
    r = run("train", topic_txt, "-o", tmp_path / "m", *TINY, "--lr", "1e30", "--max-steps", "15")
    one_line_error(r, "training failed", "no length", "lower --lr", "no model was saved")
    assert not (tmp_path / "m").exists()


def test_quantize_refuses_to_calibrate_on_a_handful_of_documents(tmp_path, model_dir):
    (tmp_path / "one.txt").write_text("just one document here\n")
    one_line_error(run("quantize", model_dir, tmp_path / "one.txt"), "at least 100 documents",
                   "got 1")
    assert not (model_dir / "int8_scales.json").exists()


@pytest.mark.parametrize("key, value, fragment", [("normalize", "no", "true or false"),
                                                  ("pooling", "max", '"mean" or "sublinear"'),
                                                  ("format_version", "1", "an integer")])
def test_a_config_value_of_the_wrong_type_is_refused(tmp_path, model_dir, key, value, fragment):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(cfg, **{key: value})))
    write_manifest(str(bad))
    with pytest.raises(minembed.MinembedError, match=f"{key} = '{value}', not {fragment}"):
        minembed.load(bad)


@pytest.mark.parametrize("how", ["-", "/dev/stdin"])
def test_train_and_embed_read_a_pipe(tmp_path, topic_txt, how):
    data = open(topic_txt, "rb").read()
    r = cli("train", how, "-o", tmp_path / "m", *TINY, "--max-steps", "3", input=data.decode())
    assert r.returncode == 0, r.stderr                                    # was "the file is empty"
    assert json.loads((tmp_path / "m" / "config.json").read_text())["corpus"]["documents"] == 240
    r = cli("embed", tmp_path / "m", how, "-o", tmp_path / "x.npy", input=data.decode())
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "x.npy").shape == (240, 16)
    assert not os.listdir(cache_subdir("stdin"))                          # the spooled copy: gone


# tracebacks and waste ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["train", "{corpus}", "--seed", "-1"], "--seed"),
    (["map", "{model}", "{corpus}", "-o", "m.png", "--perplexity", "-5"], "--perplexity"),
    (["map", "{model}", "{corpus}", "-o", "m.png", "--seed", "-3"], "--seed"),
    (["compare", "--seed", "-1"], "--seed"),
    (["search", "{model}", "{corpus}", "x", "-k", "0"], "-k"),
    (["embed", "{model}", "{corpus}", "-o", "x.npy", "--batch-size", "0"], "--batch-size"),
])
def test_bad_numbers_are_one_line_errors(tmp_path, model_dir, topic_txt, args, fragment):
    args = [a.format(corpus=topic_txt, model=model_dir) for a in args]
    r = run(*args)
    assert r.exit_code in (1, 2) and "Traceback" not in r.output and fragment in r.output, r.output
    assert "Error" in r.output.strip().splitlines()[-1]


def test_outputs_are_checked_before_the_work(tmp_path, model_dir, topic_jsonl):
    t = time.perf_counter()
    one_line_error(run("map", model_dir, topic_jsonl, "-o", tmp_path / "nodir" / "map.html"),
                   "does not exist")
    one_line_error(run("map", model_dir, topic_jsonl, "-o", tmp_path / "map.svg"), ".png or .html")
    one_line_error(run("embed", model_dir, topic_jsonl, "-o", tmp_path / "no" / "x.npy"),
                   "does not exist")
    one_line_error(run("plot-log", model_dir, "-o", tmp_path / "no" / "c.png"), "does not exist")
    assert time.perf_counter() - t < 20                     # no t-SNE, no embedding first


def test_tsne_and_eval_show_progress_off_a_terminal(tmp_path, model_dir, topic_jsonl):
    pytest.importorskip("openTSNE")
    env = {"MINEMBED_PROGRESS_SECONDS": "0"}
    r = cli("map", model_dir, topic_jsonl, "-o", tmp_path / "m.png", env=env)
    assert r.returncode == 0, r.stderr
    steps = [line for line in r.stderr.splitlines() if line.startswith("t-SNE of 240 documents:")]
    assert "nearest neighbours" in steps[0] and any("750/750 iterations" in s for s in steps)
    r = cli("eval", model_dir, topic_jsonl, "--splits", "2", env=env)
    assert r.returncode == 0, r.stderr
    for part in ("kNN accuracy of the model over 2 splits", "kNN accuracy of TF-IDF",
                 "retrieval of held-out crops"):
        assert f"eval: {part}" in r.stderr


def test_embed_takes_max_doc_chars(tmp_path, model_dir):
    (tmp_path / "big.txt").write_text("word " * 250_000 + "\nsmall one\n")   # 1.25M characters
    one_line_error(run("embed", model_dir, tmp_path / "big.txt", "-o", tmp_path / "x.npy"),
                   "--max-doc-chars")
    r = run("embed", model_dir, tmp_path / "big.txt", "-o", tmp_path / "x.npy",
            "--max-doc-chars", "2000000")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "x.npy").shape == (2, 16)


def test_what_killed_processes_left_in_the_cache_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("MINEMBED_CACHE", str(tmp_path / "cache"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()   # a pid now unused
    corpora = tmp_path / "cache" / "corpora"
    (corpora / f"abc.tmp-{dead}").mkdir(parents=True)                     # tokenising, killed
    (corpora / f"abc.tmp-{dead}" / "ids.npy").write_bytes(b"x" * 1000)
    (corpora / f".tok.json.{dead}.k2j3.tmp").write_bytes(b"x")             # an atomic write
    (corpora / f"live.tmp-{os.getpid()}").mkdir()                          # this process: kept
    (corpora / "finished").mkdir()
    remove_stale(str(corpora))
    assert sorted(os.listdir(corpora)) == ["finished", f"live.tmp-{os.getpid()}"]


def test_python_api_errors_say_what_is_wrong(model_dir, topic_txt):
    model = minembed.load(model_dir)
    for call, fragment in [(lambda: minembed.load(None), "got NoneType"),
                           (lambda: minembed.load(topic_txt), "is a file, not a model directory"),
                           (lambda: model.encode(b"bytes"), "got bytes"),
                           (lambda: model.encode(["ok", b"x"]), "text 1 is a bytes"),
                           (lambda: model.encode(["ok", "a \ud800 b"]), "text 1 holds a lone"),
                           (lambda: model.encode(["ok"], threads=0), "threads must be a positive")]:
        with pytest.raises(minembed.MinembedError, match=fragment):
            call()


def test_ci_draws_the_same_property_examples_every_run():
    assert settings.default.derandomize == bool(os.environ.get("CI"))


# small lies --------------------------------------------------------------------------------------

def test_symmetric_is_a_flag_pair(tmp_path, topic_txt):
    for flag, want in (("--symmetric", True), ("--no-symmetric", False)):
        r = run("train", topic_txt, "-o", tmp_path / flag, *TINY, "--max-steps", "2", flag, "-q")
        assert r.exit_code == 0, r.output
        config = json.loads((tmp_path / flag / "config.json").read_text())
        assert config["training"]["symmetric"] is want


def test_search_shows_line_numbers(tmp_path, model_dir):
    (tmp_path / "c.txt").write_text("\n\nstar planet orbit telescope\n\nguitar melody chord\n")
    r = run("search", model_dir, tmp_path / "c.txt", "guitar melody chord", "--no-cache")
    assert r.exit_code == 0, r.output
    assert "line 5" in r.output.splitlines()[0] and "line 3" in r.output.splitlines()[1]


def test_eval_works_on_one_line_texts(tmp_path, model_dir, topic_docs):
    """A corpus of short texts: kNN is reported (it was thrown away: "retrieval needs at least 2
    documents of 8 words or more"), and the retrieval takes crops of short documents; a corpus
    with no document of two words skips retrieval with a note."""
    texts, labels = topic_docs
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps({"text": " ".join(t.split()[:5]), "label": lab}) + "\n"
                             for t, lab in zip(texts, labels)))
    r = run("eval", model_dir, short, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert set(res["knn"]) >= {"model", "untrained", "tfidf"}
    assert res["retrieval"]["crops"].startswith("short documents")
    assert res["retrieval"]["model"]["documents"] == 240
    single = tmp_path / "single.jsonl"
    single.write_text("".join(json.dumps({"text": t.split()[0], "label": lab}) + "\n"
                              for t, lab in zip(texts, labels)))
    r = run("eval", model_dir, single)
    assert r.exit_code == 0, r.output
    assert "retrieval skipped: 0 document(s) of 2 words or more" in r.output
    assert "untrained" in r.output
