"""Pictures: the t-SNE map and the training curves are real PNGs of the expected size;
`train --eval-every` records kNN accuracy in the log."""
import csv
import json
import os
import struct
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from minembed.cli import main
from minembed.errors import MinembedError
from minembed import viz

pytest.importorskip("matplotlib")


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, topic_jsonl):
    out = str(tmp_path_factory.mktemp("viz") / "model")
    r = CliRunner().invoke(main, ["train", topic_jsonl, "-o", out, "--dim", "32", "--epochs", "3",
                                  "--batch-size", "32", "--vocab-size", "500", "--eval-every", "4",
                                  "-q"])
    assert r.exit_code == 0, r.output
    return out


def test_eval_every_records_knn_accuracy(model_dir):
    recs = [json.loads(l) for l in open(os.path.join(model_dir, "log.jsonl"))]
    with_knn = [r["step"] for r in recs if "knn_cosine" in r]
    last = recs[-1]["step"]
    assert with_knn == sorted(set(list(range(4, last + 1, 4)) + [last]))
    for r in recs:
        if "knn_cosine" in r:
            assert 0 <= r["knn_euclidean"] <= 1 and 0 <= r["knn_cosine"] <= 1
    assert recs[-1]["knn_cosine"] > 0.4  # four topics: chance is 0.25


def test_plot_log(model_dir, tmp_path):
    out = tmp_path / "curve.png"
    r = CliRunner().invoke(main, ["plot-log", model_dir, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert png_size(out) == (1000, 400)


def test_plot_log_without_knn(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": i, "loss": 3.0 / i}) + "\n" for i in range(1, 30)))
    assert viz.plot_log(str(log), str(tmp_path / "c.png")) == 0
    assert png_size(tmp_path / "c.png") == (1000, 400)
    with pytest.raises(MinembedError, match="no training log"):
        viz.plot_log(str(tmp_path / "nowhere"), str(tmp_path / "d.png"))


def test_map_with_labels(model_dir, topic_jsonl, tmp_path):
    out = tmp_path / "map.png"
    r = CliRunner().invoke(main, ["map", model_dir, topic_jsonl, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert png_size(out) == (1000, 800)
    coords = np.load(tmp_path / "map.npy", allow_pickle=False)
    assert coords.shape == (240, 2) and np.isfinite(coords).all()
    with open(tmp_path / "map.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "x", "y", "label"] and len(rows) == 241
    assert {row[3] for row in rows[1:]} == {"astronomy", "cooking", "music", "sport"}


def test_map_without_labels(model_dir, topic_txt, tmp_path):
    coords, labels, paths = viz.map_corpus(model_dir, topic_txt, str(tmp_path / "m.png"),
                                           max_docs=100)
    assert labels is None and coords.shape == (100, 2)
    assert png_size(tmp_path / "m.png") == (1000, 800)
    with open(tmp_path / "m.csv") as f:
        assert next(csv.reader(f)) == ["index", "x", "y"]


def test_missing_matplotlib_is_a_clear_error(model_dir, topic_txt, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MinembedError, match=r'pip install -e "\.\[plot\]"'):
        viz.map_corpus(model_dir, topic_txt, str(tmp_path / "m.png"))
    r = CliRunner().invoke(main, ["plot-log", model_dir, "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 1 and "need matplotlib" in r.output
