"""Pictures: the t-SNE map (a PNG, and an HTML page that headless Chromium renders) and the
training curves are real files of the expected size; `train --eval-every` records kNN
accuracy in the log."""
import csv
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from minembed.product.cli import main
from minembed.errors import MinembedError
from minembed.product import viz
from minembed.product.evaluate import knn_accuracy

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
    recs = [json.loads(line) for line in open(os.path.join(model_dir, "log.jsonl"))]
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
    r = CliRunner().invoke(main, ["map", model_dir, topic_jsonl, "-o", str(out),
                                  "--exaggeration", "2"])
    assert r.exit_code == 0, r.output
    assert png_size(out) == (1000, 800)
    coords = np.load(tmp_path / "map.npy", allow_pickle=False)
    assert coords.shape == (240, 2) and np.isfinite(coords).all()
    with open(tmp_path / "map.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "x", "y", "label"] and len(rows) == 241
    assert {row[3] for row in rows[1:]} == {"astronomy", "cooking", "music", "sport"}
    # the map keeps the topics apart: kNN in the 2-D map is as good as in the embedding
    labels = np.array([row[3] for row in rows[1:]])
    assert knn_accuracy(coords, labels) >= 0.9


def test_map_without_labels(model_dir, topic_txt, tmp_path):
    coords, labels, paths = viz.map_corpus(model_dir, topic_txt, str(tmp_path / "m.png"),
                                           max_docs=100)
    assert labels is None and coords.shape == (100, 2)
    assert png_size(tmp_path / "m.png") == (1000, 800)
    with open(tmp_path / "m.csv") as f:
        assert next(csv.reader(f)) == ["index", "x", "y"]
    assert paths == [str(tmp_path / "m.png"), str(tmp_path / "m.npy"), str(tmp_path / "m.csv")]


def oklab_distances(colors):
    rgb = np.array([[int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)] for c in colors])
    lab = viz._oklab(rgb)
    d = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    return lab, d[np.triu_indices(len(colors), 1)]


def test_palette_stays_distinguishable():
    p = viz.palette(40)
    assert p == viz.palette(40) and len(set(p)) == 40  # deterministic, no repeats
    assert p[:10] == ["#" + h for h in viz.TAB10] and viz.palette(3) == p[:3]
    lab, d = oklab_distances(p)
    assert d.min() > 0.1  # tab10's own closest pair is 0.113 apart in OKLab
    assert (lab[10:, 0] > 0.4).all() and (lab[10:, 0] < 0.8).all()  # visible on white
    from matplotlib import colormaps, colors
    hsv = [colors.to_hex(colormaps["hsv"](i / 29)) for i in range(29)]  # the old colours
    assert oklab_distances(hsv)[1].min() < 0.01 < oklab_distances(p[:29])[1].min() / 10


def test_tsne_openTSNE_and_the_scikit_learn_fallback(monkeypatch):
    pytest.importorskip("openTSNE")
    import openTSNE
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 64)) * 3
    y = np.repeat(np.arange(4), 50)
    X = (centres[y] + rng.normal(size=(200, 64))).astype(np.float32)
    seen = []

    class Spy(openTSNE.TSNE):
        def __init__(self, **kw):
            seen.append(kw)
            super().__init__(**kw)

    monkeypatch.setattr(openTSNE, "TSNE", Spy)
    Y = viz.tsne(X, exaggeration=4)
    assert seen[0]["initialization"] == "pca" and seen[0]["exaggeration"] == 4
    assert seen[0]["perplexity"] == 30
    assert Y.shape == (200, 2) and Y.dtype == np.float32 and knn_accuracy(Y, y) == 1.0
    assert np.array_equal(Y, viz.tsne(X, exaggeration=4))  # seeded: the same map twice
    monkeypatch.setitem(sys.modules, "openTSNE", None)  # not installed: scikit-learn's
    Y = viz.tsne(X)
    assert len(seen) == 2 and Y.shape == (200, 2) and knn_accuracy(Y, y) == 1.0
    with pytest.raises(MinembedError,
                       match=r"maps with --exaggeration need openTSNE: pip install openTSNE"):
        viz.tsne(X, exaggeration=4)
    with pytest.raises(MinembedError, match="at least 5 documents"):
        viz.tsne(X[:4])


@pytest.fixture(scope="module")
def html_map(model_dir, topic_jsonl, tmp_path_factory):
    """One run writes both the PNG and the interactive page."""
    pytest.importorskip("plotly")
    out = tmp_path_factory.mktemp("html")
    r = CliRunner().invoke(main, ["map", model_dir, topic_jsonl, "-o", str(out / "map.png"),
                                  "-o", str(out / "map.html")])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == "wrote " + ", ".join(
        str(out / f) for f in ("map.png", "map.npy", "map.csv", "map.html"))
    return out / "map.html"


def test_html_map_is_self_contained(html_map, model_dir, topic_jsonl, topic_docs):
    page = html_map.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc=", page) and not re.search(r"<link[^>]*href=", page)
    assert 3_000_000 < len(page) < 8_000_000  # plotly.js inlined
    from minembed import load
    texts, labels = topic_docs
    acc = knn_accuracy(load(model_dir).encode(texts), labels, metric="cosine")
    title = (f"model on topics.jsonl: 240 documents, 4 labels, kNN accuracy {100 * acc:.1f} % "
             "(k = 10, cosine, one 90/10 split)")
    assert f"<title>{title}</title>" in page
    # the hover text of document 0: its index, label and first lines (JSON-escaped as plotly does)
    hover = f"#0 <b>{labels[0]}</b><br>{viz._snippet(texts[0])}"
    assert json.dumps(hover).translate({60: "\\u003c", 62: "\\u003e", 47: "\\u002f"}) in page
    assert viz._snippet("a " * 200).count("<br>") == 3 and viz._snippet("x < y") == "x &lt; y"


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):  # never skipped in CI: .ci/run installs Debian's chromium
        pytest.fail("no chromium to test the HTML map in (apt-get install chromium)")
    pytest.skip("no chromium to test the HTML map in (apt-get install chromium)")


def run_chromium(tmp_path, url, *args):
    r = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                        "--virtual-time-budget=10000", *args, url],
                       capture_output=True, timeout=180)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    return r.stdout.decode("utf-8")


def test_html_map_renders_in_a_browser(html_map, tmp_path, topic_docs):
    """Headless Chromium draws the page: a 1200 x 800 screenshot with every label's points in
    its colour, the title rendered into the DOM, and the search finding what Python finds."""
    from PIL import Image
    shot = tmp_path / "shot.png"
    run_chromium(tmp_path, html_map.as_uri(), f"--screenshot={shot}", "--window-size=1200,800")
    assert png_size(shot) == (1200, 800)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 100  # not blank
    plot = 255 - img[80:, :1000].reshape(-1, 3)  # below the title, left of the legend
    texts, labels = topic_docs
    for name, idx, color in viz._groups(labels, 240) + [(None, None, viz.palette(5)[4])]:
        # a point is its colour over white at its opacity (or more, where points overlap)
        c = 255 - np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
        w = plot @ c / (c @ c)
        near = (np.linalg.norm(plot - w[:, None] * c, axis=1) < 15) & (w > 0.6)
        if name is None:  # a colour of no label: nowhere
            assert near.sum() == 0
        else:  # 60 dots of ~11 pixels, overlapping
            assert near.sum() > 300, (name, near.sum())
    dom = run_chromium(tmp_path, html_map.as_uri() + "#search=Guitar", "--dump-dom")
    assert 'class="gtitle"' not in html_map.read_text(encoding="utf-8")  # drawn by the script
    title = re.search(r'<text class="gtitle"[^>]*>([^<]*)</text>', dom)
    assert title and "240 documents, 4 labels" in title.group(1)
    hits = sum("guitar" in t[:1000].lower() for t in texts)
    assert 0 < hits < 240
    assert f'<span id="minembed-hits">{hits} of 240 documents match</span>' in dom
    # hover: plotly's own hover on document 0 (the first point of the first label) draws its
    # index, label and first line into the page
    hover = tmp_path / "hover.html"
    hover.write_text(html_map.read_text(encoding="utf-8").replace("</body>", HOVER + "</body>"),
                     encoding="utf-8")
    dom = run_chromium(tmp_path, hover.as_uri(), "--dump-dom")
    shown = re.sub(r"<[^>]+>", " ", dom[dom.index('class="hoverlayer"'):])
    assert re.search(rf"#0\s+{labels[0]}\s", shown) and textwrap.wrap(texts[0], 80)[0] in shown


HOVER = ("<script>setTimeout(function () { Plotly.Fx.hover(document.querySelector("
         "'.plotly-graph-div'), [{curveNumber: 0, pointNumber: 0}]); }, 1000);</script>")


def test_missing_matplotlib_is_a_clear_error(model_dir, topic_txt, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MinembedError, match=r'pip install -e "\.\[plot\]"'):
        viz.map_corpus(model_dir, topic_txt, str(tmp_path / "m.png"))
    r = CliRunner().invoke(main, ["plot-log", model_dir, "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 1 and "need matplotlib" in r.output


def test_missing_plotly_and_bad_outputs_are_clear_errors(model_dir, topic_txt, tmp_path,
                                                         monkeypatch):
    def error(*args):
        r = CliRunner().invoke(main, ["map", model_dir, topic_txt, *map(str, args)])
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        return r.output.strip().splitlines()[-1]

    svg = tmp_path / "m.svg"
    assert error("-o", svg) == f"Error: {svg}: the output must end in .png or .html"
    r = CliRunner().invoke(main, ["map", model_dir, topic_txt, "-o", str(tmp_path / "m.png"),
                                  "--exaggeration", "0"])
    assert r.exit_code == 2 and "--exaggeration" in r.output and "Traceback" not in r.output
    for name in [m for m in sys.modules if m == "plotly" or m.startswith("plotly.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "plotly", None)
    assert error("-o", tmp_path / "m.html") == ('Error: HTML maps need plotly: pip install plotly '
                                                '(in a clone of minembed: '
                                                'pip install -e ".[plot]")')
    assert not (tmp_path / "m.npy").exists() and not (tmp_path / "m.png").exists()


def test_label_names_do_not_cover_each_other(tmp_path):
    """Six labels whose points share one median: each name is nudged off the others."""
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(600, 2)).astype(np.float32)
    labels = [f"label number {i % 6}" for i in range(600)]
    boxes = viz.plot_map(coords, labels, str(tmp_path / "m.png"))
    assert len(boxes) == 6 and png_size(tmp_path / "m.png") == (1000, 800)
    for i, a in enumerate(boxes):
        for b in boxes[:i]:
            assert not a.overlaps(b)
    centres = sorted(b.y0 + b.height / 2 for b in boxes)  # stacked about the common median
    assert 0 < np.diff(centres).min() and max(centres) - min(centres) < 6 * 2 * boxes[0].height
