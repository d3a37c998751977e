"""`minembed compare`: the table's structure and numbers from a real (tiny, --fast) run."""
import json
import os

import pytest
from click.testing import CliRunner

from minembed.product.cli import main
from minembed.product.compare import FAST, MAIN_RUNS, format_table, run_comparison
from minembed.errors import MinembedError

NAMES = (["TF-IDF", "TF-IDF + SVD + L2", "majority class", "untrained bag"]
         + [name for name, _, _ in MAIN_RUNS])
FIELDS = {"configuration", "model", "settings", "steps", "epochs", "train_seconds", "final_loss",
          "knn_euclidean", "knn_cosine", "linear_probe", "eval_seconds"}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, topic_jsonl):
    """One real `minembed compare --fast` with a sweep, on 240 labelled documents."""
    out = tmp_path_factory.mktemp("compare")
    res = CliRunner().invoke(main, ["compare", topic_jsonl, "--fast", "--sweep", "temperature",
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    return res, out


def test_table_has_every_configuration_and_real_numbers(cli_run):
    res, out = cli_run
    with open(out / "compare.json") as f:
        table = json.load(f)
    rows = table["rows"]
    assert [r["configuration"] for r in rows] == NAMES
    for r in rows:
        assert FIELDS <= set(r)
        for k in ("knn_euclidean", "knn_cosine", "linear_probe"):
            assert 0.0 <= r[k] <= 1.0
    by = {r["configuration"]: r for r in rows}
    # trained rows ran steps, the others none; TF-IDF separates the four topics
    for name, kind, _ in MAIN_RUNS:  # fixed step counts: the same table on any machine
        assert by[name]["steps"] == FAST[kind]["max_steps"] and by[name]["train_seconds"] > 0
        assert by[name]["final_loss"] is not None
    assert by["untrained bag"]["steps"] == 0
    assert by["TF-IDF + SVD + L2"]["knn_cosine"] >= 0.7
    assert by["bag + crops"]["knn_cosine"] > 0.4  # chance is 0.25
    meta = table["meta"]
    assert meta["documents"] == 240 and meta["labels"] == 4 and meta["fast"]
    assert meta["command"].startswith("minembed compare")
    assert meta["total_seconds"] < 120


def test_markdown_and_printed_table(cli_run):
    res, out = cli_run
    md = (out / "compare.md").read_text()
    assert "| configuration |" in md and "paper kNN %" in md
    assert md.count("\n| ") == len(NAMES) + 1  # header + one line per row
    for name in NAMES:
        assert name in res.output and name in md
    assert "sweep: temperature" in res.output


def test_sweep_writes_its_own_table(cli_run):
    _, out = cli_run
    with open(out / "sweep-temperature.json") as f:
        rows = json.load(f)["rows"]
    assert [r["configuration"] for r in rows] == ["tau=0.005", "tau=0.05", "tau=0.5", "tau=5"]
    assert all(r["steps"] == FAST["bag"]["max_steps"] for r in rows)
    assert os.path.isfile(out / "sweep-temperature.md")


def test_format_table_text():
    rows = [dict(configuration="x", knn_euclidean=0.5, knn_cosine=0.25, linear_probe=1.0,
                 steps=3, epochs=1.5, train_seconds=2.0, final_loss=None)]
    text = format_table(rows)
    assert "50.0" in text and "25.0" in text and "100.0" in text and "1.5" in text


def test_errors(topic_txt, topic_jsonl):
    with pytest.raises(MinembedError, match="no labels"):
        run_comparison(topic_txt, fast=True)
    with pytest.raises(MinembedError, match="unknown sweep"):
        run_comparison(topic_jsonl, fast=True, sweeps=["nope"])
    with pytest.raises(MinembedError, match="nothing to do"):
        run_comparison(topic_jsonl, fast=True, main=False)
