"""Pictures: a 2-D map of a corpus (t-SNE of its embeddings) and training curves.

matplotlib is an optional dependency (the ``plot`` extra); it is imported only
here, only when a picture is drawn, and without pyplot (a Figure rendered by
the Agg canvas), so nothing depends on a display or a global backend.

t-SNE follows the usual advice for 1k-50k points (Kobak & Berens 2019):
the embeddings are L2-normalised (cosine geometry, which is what kNN with
cosine distance and search use), reduced to 50 dimensions by PCA, then
embedded by scikit-learn's Barnes-Hut t-SNE with PCA initialisation (global
structure preserved, deterministic), learning rate "auto" (N/12) and
perplexity 30 (lowered for tiny corpora, where it must stay below N).
"""
import csv
import io
import os
import sys

import numpy as np

from .errors import MinembedError
from .model import atomic_write_bytes, read_log

FIGSIZE = (10, 8)   # inches; with DPI the PNG is 1000 x 800 pixels
DPI = 100
CURVE_FIGSIZE = (10, 4)


def _figure(figsize):
    try:
        import matplotlib  # noqa: F401  (the package itself first: a clear ImportError)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MinembedError("pictures need matplotlib: pip install matplotlib (in a clone of "
                            "minembed: pip install -e \".[plot]\")") from None
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------
# the corpus map

def tsne(X, perplexity=None, seed=0, pca_dim=50):
    """2-D t-SNE coordinates (N, 2) of embeddings X (N, D)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    if n < 5:
        raise MinembedError(f"a map needs at least 5 documents, got {n}")
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    if X.shape[1] > pca_dim and n > pca_dim:
        X = PCA(n_components=pca_dim, random_state=seed).fit_transform(X)
    if perplexity is None:
        perplexity = 30.0
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3)))
    Y = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
             random_state=seed).fit_transform(X.astype(np.float64))
    return Y.astype(np.float32)


def _colors(n):
    """n distinguishable colours: tab10/tab20 while they suffice, then evenly spaced hues."""
    from matplotlib import colormaps
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


def plot_map(coords, labels, path, title=None):
    """Scatter of the 2-D coordinates, coloured by label (with a legend) when labels exist."""
    fig = _figure(FIGSIZE)
    n = len(coords)
    size = float(np.clip(20000 / max(n, 1), 2, 25))  # smaller points for bigger corpora
    if labels is None:
        ax = fig.add_axes([0.04, 0.04, 0.92, 0.88])
        ax.scatter(coords[:, 0], coords[:, 1], s=size, c="#1f77b4", alpha=0.6, linewidths=0)
    else:
        ax = fig.add_axes([0.03, 0.04, 0.67, 0.88])
        labels = np.asarray([str(x) for x in labels])
        names, counts = np.unique(labels, return_counts=True)
        names = names[np.argsort(-counts, kind="stable")]  # biggest classes first in the legend
        for name, color in zip(names, _colors(len(names))):
            m = labels == name
            ax.scatter(coords[m, 0], coords[m, 1], s=size, color=color, alpha=0.7, linewidths=0,
                       label=f"{name} ({m.sum()})")
        ncol = 1 if len(names) <= 25 else 2
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7 if ncol == 1 else 6,
                  markerscale=max(1.0, 6 / np.sqrt(size)), frameon=False, ncol=ncol)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {n:,} documents", fontsize=11)
    _save_png(fig, path)


def write_coords(coords, labels, stem):
    """coords as stem.npy (float32, no pickle) and stem.csv (index, x, y[, label])."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(coords, dtype=np.float32), allow_pickle=False)
    atomic_write_bytes(stem + ".npy", buf.getvalue())
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["index", "x", "y"] + (["label"] if labels is not None else []))
    for i, (x, y) in enumerate(coords):
        w.writerow([i, f"{x:.5g}", f"{y:.5g}"] + ([labels[i]] if labels is not None else []))
    atomic_write_bytes(stem + ".csv", out.getvalue().encode("utf-8"))
    return stem + ".npy", stem + ".csv"


def map_corpus(model, corpus=None, out="map.png", fmt="auto", perplexity=None, seed=0,
               max_docs=None, title=None, encoding="utf-8", errors="strict"):
    """Embed a corpus (None: the built-in one), t-SNE it, draw it to ``out`` (PNG) and
    write the coordinates next to it (``out`` without .png + .npy/.csv).

    ``model``: a Model or a model directory. ``max_docs``: a random subset (seeded)
    for very big corpora. Returns (coords, labels, written paths)."""
    from .data import Corpus
    from .model import Model, load
    from .progress import Progress

    _figure((1, 1))  # fail early, before the slow part, if matplotlib is missing
    if not isinstance(model, Model):
        model = load(model)
    texts, labels = Corpus(corpus, fmt, encoding=encoding, errors=errors).read()
    if max_docs and len(texts) > max_docs:
        keep = np.sort(np.random.default_rng(seed).permutation(len(texts))[:max_docs])
        texts = [texts[i] for i in keep]
        labels = None if labels is None else [labels[i] for i in keep]
    bar = Progress(len(texts), "embedding", "document")
    X = model.encode(texts, progress=bar.update)
    bar.close()
    print(f"t-SNE of {len(texts):,} documents ...", file=sys.stderr, flush=True)
    coords = tsne(X, perplexity=perplexity, seed=seed)
    name = os.path.basename(os.path.normpath(model.path)) if model.path else "model"
    plot_map(coords, labels, out,
             title or f"{name}: t-SNE of {len(texts):,} documents"
             + ("" if labels is None else f", {len(set(labels))} labels"))
    stem = out[:-4] if out.lower().endswith(".png") else out
    return coords, labels, [out, *write_coords(coords, labels, stem)]


# ---------------------------------------------------------------------------
# training curves

def _smooth(y, window):
    if window <= 1 or len(y) < window:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    out[window - 1:] = (c[window:] - c[:-window]) / window
    out[:window - 1] = c[1:window] / np.arange(1, window)  # a growing window at the start
    return out


def plot_log(model_dir, out="curve.png"):
    """Loss (raw and smoothed) and, when recorded (``train --eval-every``), kNN
    accuracy against training steps. Returns the number of kNN points drawn."""
    recs = read_log(model_dir)
    fig = _figure(CURVE_FIGSIZE)
    steps = np.array([r["step"] for r in recs], dtype=float)
    loss = np.array([r["loss"] for r in recs], dtype=float)
    ax1 = fig.add_axes([0.07, 0.13, 0.38, 0.75])
    ax1.plot(steps, loss, color="#1f77b4", alpha=0.3, linewidth=0.8, label="loss")
    ax1.plot(steps, _smooth(loss, max(1, len(loss) // 50)), color="#1f77b4", linewidth=1.5,
             label="smoothed")
    ax1.set_xlabel("step")
    ax1.set_ylabel("InfoNCE loss")
    ax1.set_title("training loss", fontsize=10)
    ax1.legend(fontsize=8, frameon=False)
    ax2 = fig.add_axes([0.57, 0.13, 0.38, 0.75])
    ev = [r for r in recs if "knn_euclidean" in r or "knn_cosine" in r]
    for key, name, color in (("knn_euclidean", "Euclidean", "#d62728"),
                             ("knn_cosine", "cosine", "#2ca02c")):
        pts = [(r["step"], 100 * r[key]) for r in ev if key in r]
        if pts:
            x, y = zip(*pts)
            ax2.plot(x, y, marker="o", markersize=3, color=color, label=f"kNN {name}")
    if ev:
        ax2.legend(fontsize=8, frameon=False)
        ax2.set_ylabel("kNN accuracy %")
    else:
        ax2.text(0.5, 0.5, "no kNN accuracy in the log\n(train with --eval-every N\n"
                 "on a labelled corpus)", ha="center", va="center", transform=ax2.transAxes,
                 fontsize=9, color="gray")
    ax2.set_xlabel("step")
    ax2.set_xlim(ax1.get_xlim())
    ax2.set_title("kNN accuracy (k = 10)", fontsize=10)
    _save_png(fig, out)
    return len(ev)
