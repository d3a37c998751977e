"""Pictures: a 2-D map of a corpus (t-SNE of its embeddings) as a PNG or an HTML page,
and training curves. The ``plot`` extra (matplotlib without pyplot, openTSNE, plotly) is
imported only here, when a picture is drawn.

t-SNE (Kobak & Berens 2019) of the L2-normalised embeddings (cosine geometry, as kNN and
search use) after PCA to 50 dimensions: PCA initialisation, learning rate N/12, perplexity
30; by openTSNE (FFT-accelerated) when installed, else scikit-learn's (no exaggeration; slow
past ~20k points). t-SNE of 100k documents: 5-7 minutes on 2 busy cores (bench_map.py).

The HTML page is Plotly's (plotly.js inlined): hover, pan, zoom and a legend that hides
labels come with it, drawn as SVG (WebGL past 10k points) that a DOM dump can check; the
search box is a short post-plot script (map_search.js). Bokeh needs as much script for a
search, and more dependencies.
"""
import csv
import html
import importlib
import io
import json
import os
import string
import sys
import textwrap

import numpy as np

from ..errors import MinembedError
from .corpus import MAX_DOC_CHARS
from .files import atomic_write_bytes
from .modeldir import read_log

FIGSIZE = (10, 8)   # inches; with DPI the PNG is 1000 x 800 pixels
DPI = 100
CURVE_FIGSIZE = (10, 4)


def _need(module, what):
    """Import a module of the plot extra, or a one-line error that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise MinembedError(f"{what} need {top}: pip install {top} (in a clone of minembed: "
                            "pip install -e \".[plot]\")") from None


def _figure(figsize):
    _need("matplotlib", "pictures")  # the package itself first: a clear error
    fig = _need("matplotlib.figure", "pictures").Figure(figsize=figsize, dpi=DPI)
    _need("matplotlib.backends.backend_agg", "pictures").FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------
# the corpus map

def tsne(X, perplexity=None, seed=0, pca_dim=50, exaggeration=None, quiet=True):
    """2-D t-SNE coordinates (N, 2) of embeddings X (N, D); progress on stderr unless quiet."""
    from sklearn.decomposition import PCA

    from .progress import Progress

    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    if n < 5:
        raise MinembedError(f"a map needs at least 5 documents, got {n}")
    if exaggeration is not None and not exaggeration > 0:
        raise MinembedError(f"--exaggeration must be positive, got {exaggeration}")
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    if X.shape[1] > pca_dim and n > pca_dim:
        X = PCA(n_components=pca_dim, random_state=seed).fit_transform(X)
    X, perplexity = X.astype(np.float64), float(min(perplexity or 30.0, max(1.0, (n - 1) / 3)))
    if exaggeration not in (None, 1):  # scikit-learn's t-SNE has no such option
        _need("openTSNE", "maps with --exaggeration")
    try:
        from openTSNE import TSNE
    except ImportError:
        from sklearn.manifold import TSNE
        if not quiet:
            print(f"t-SNE of {n:,} documents (scikit-learn's: no progress to show; openTSNE, in "
                  "the plot extra, is faster and shows it)", file=sys.stderr, flush=True)
        return TSNE(perplexity=perplexity, init="pca", learning_rate="auto",
                    random_state=seed).fit_transform(X).astype(np.float32)
    early, main, every = 250, 500, 25  # openTSNE's phases (iterations), and a report every 25
    bar = Progress(early + main, f"t-SNE of {n:,} documents", "iteration", quiet=quiet)
    if not quiet:  # the nearest neighbours and affinities come first, and take a while
        print(f"t-SNE of {n:,} documents: nearest neighbours and affinities (perplexity "
              f"{perplexity:g})", file=sys.stderr, flush=True)
    step = lambda iteration, error, embedding: bar.update(every, f"KL {error:.3f}")  # noqa: E731
    Y = TSNE(perplexity=perplexity, initialization="pca", exaggeration=exaggeration,
             early_exaggeration_iter=early, n_iter=main, n_jobs=os.cpu_count() or 1,
             random_state=seed, callbacks=step, callbacks_every_iters=every).fit(X)
    bar.close()
    return np.asarray(Y, dtype=np.float32)


def _oklab(rgb):
    """OKLab coordinates (..., 3) of sRGB colours in [0, 1] (Ottosson 2020)."""
    c = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    lms = np.cbrt(c @ np.array([[0.4122214708, 0.2119034982, 0.0883024619],
                                [0.5363325363, 0.6806995451, 0.2817188376],
                                [0.0514459929, 0.1073969566, 0.6299787005]]))
    return lms @ np.array([[0.2104542553, 1.9779984951, 0.0259040371],
                           [0.7936177850, -2.4285922050, 0.7827717662],
                           [-0.0040720468, 0.4505937099, -0.8086757660]])


TAB10 = "1f77b4 ff7f0e 2ca02c d62728 9467bd 8c564b e377c2 7f7f7f bcbd22 17becf".split()


def palette(n):
    """n distinct colours '#rrggbb': matplotlib's tab10, then glasbey-style: each next colour
    is the one of a 16^3 sRGB grid (OKLab lightness 0.4-0.8, so that it shows on white)
    farthest in OKLab from those chosen and from the white background."""
    grid = np.stack(np.meshgrid(*[np.linspace(0, 1, 16)] * 3, indexing="ij"), -1).reshape(-1, 3)
    lab = _oklab(grid)
    keep = (lab[:, 0] > 0.4) & (lab[:, 0] < 0.8)
    grid, lab, out = grid[keep], lab[keep], ["#" + h for h in TAB10[:n]]
    seen = np.array([[1.0] * 3] + [[int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)] for h in out])
    dist = np.linalg.norm(lab[:, None] - _oklab(seen)[None], axis=-1).min(axis=1)
    while len(out) < n:
        i = int(np.argmax(dist))
        out.append("#%02x%02x%02x" % tuple(int(round(255 * v)) for v in grid[i]))
        dist = np.minimum(dist, np.linalg.norm(lab - lab[i], axis=1))
    return out


def _groups(labels, n):
    """[(name, indices, colour)], the biggest label first; one unnamed group without labels."""
    if labels is None:
        return [(None, np.arange(n), "#" + TAB10[0])]
    labels = np.asarray([str(x) for x in labels])
    names, counts = np.unique(labels, return_counts=True)
    names = names[np.argsort(-counts, kind="stable")]
    return [(a, np.flatnonzero(labels == a), c) for a, c in zip(names, palette(len(names)))]


def _marker(n):
    """Point area (pt^2) and alpha: small, translucent points for big corpora."""
    return float(np.clip(20000 / n, 0.5, 25)), float(np.clip(50 / np.sqrt(n), 0.25, 0.9))


def plot_map(coords, labels, path, title=None):
    """Scatter of the 2-D coordinates coloured by label, each label's name written at the
    median of its points (nudged up or down off the names already written; no legend).
    Returns the names' boxes in pixels."""
    from matplotlib import patheffects
    from matplotlib.transforms import Bbox
    fig = _figure(FIGSIZE)
    size, alpha = _marker(len(coords))
    ax = fig.add_axes([0.01, 0.01, 0.98, 0.93])
    groups = _groups(labels, len(coords))
    for name, idx, color in groups:
        ax.scatter(coords[idx, 0], coords[idx, 1], s=size, color=color, alpha=alpha, linewidths=0)
    ax.set_axis_off()
    ax.set_aspect("equal", adjustable="datalim")
    ax.apply_aspect()  # final data limits before the names' extents are measured
    renderer, placed = fig.canvas.get_renderer(), []
    for name, idx, color in groups if labels is not None else []:
        dark = [0.7 * int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)]  # readable on white
        t = ax.annotate(name, np.median(coords[idx], axis=0), (0, 0), textcoords="offset points",
                        color=dark, fontsize=8, weight="bold", ha="center", va="center",
                        annotation_clip=False, parse_math=False,
                        path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")])

        def overlap(dy):  # area shared with the names already written
            t.xyann = (0, dy)
            box = t.get_window_extent(renderer)
            return sum(i.width * i.height for b in placed if (i := Bbox.intersection(box, b)))
        t.xyann = (0, min((0, 9, -9, 18, -18, 27, -27, 36, -36), key=overlap))  # nearest free
        placed.append(t.get_window_extent(renderer))
    ax.set_title(title or f"t-SNE of {len(coords):,} documents", fontsize=10, parse_math=False)
    _save_png(fig, path)
    return placed


def _snippet(text, width=80, lines=4):
    """The first lines of a text for a hover box, wrapped and HTML-escaped."""
    out = textwrap.wrap(" ".join(text[:width * lines].split()), width)
    more = " ..." if len(out) > lines else ""
    return "<br>".join(html.escape(s, quote=False) for s in out[:lines]) + more


def write_html(coords, texts, labels, path, title):
    """One self-contained HTML page (plotly.js inlined): hover shows a document's label
    and first lines; pan, zoom, a legend that hides labels, a search box."""
    go, n = _need("plotly.graph_objects", "HTML maps"), len(coords)
    size, alpha = _marker(n)
    Trace = go.Scattergl if n > 10000 else go.Scatter  # SVG while it stays fast, then WebGL
    fig, docs = go.Figure(), []
    for name, idx, color in _groups(labels, n):
        esc = html.escape(name or "", quote=False)
        hover = [f"#{i} <b>{esc}</b><br>{_snippet(texts[i])}" for i in idx]
        fig.add_trace(Trace(x=coords[idx, 0], y=coords[idx, 1], mode="markers", hovertext=hover,
                            hoverinfo="text", name=f"{name} ({len(idx):,})",
                            marker=dict(color=color, size=2 * np.sqrt(size) + 1, opacity=alpha)))
        docs.append([texts[i][:1000].lower() for i in idx])
        if name is not None:  # the label's name at its median, as in the PNG
            x, y = np.median(coords[idx], axis=0)
            fig.add_annotation(x=x, y=y, text=esc, showarrow=False,
                               font=dict(color="#222", size=11), bordercolor=color,
                               bgcolor="rgba(255,255,255,0.75)")
    fig.update_layout(title=dict(text=html.escape(title, quote=False), font=dict(size=14)),
                      template="plotly_white", dragmode="pan", showlegend=labels is not None,
                      legend=dict(itemsizing="constant", font=dict(size=11)),
                      hoverlabel=dict(align="left"), margin=dict(l=10, r=10, t=50, b=10),
                      xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"))
    with open(os.path.join(os.path.dirname(__file__), "map_search.js"), encoding="utf-8") as f:
        script = string.Template(f.read()).substitute(
            DOCS=json.dumps(docs, ensure_ascii=False).replace("<", "\\u003c"), ALPHA=alpha,
            N=f"{n:,}")
    page = fig.to_html(include_plotlyjs=True, full_html=True, default_height="calc(100vh - 60px)",
                       config=dict(scrollZoom=True, displaylogo=False), post_script=script)
    page = page.replace("<head>", f"<head><title>{html.escape(title)}</title>", 1)
    atomic_write_bytes(path, page.encode("utf-8"))


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
    return [stem + ".npy", stem + ".csv"]


def map_corpus(model, corpus=None, out="map.png", fmt="auto", perplexity=None, seed=0,
               max_docs=None, title=None, encoding="utf-8", errors="strict", exaggeration=None,
               max_doc_chars=MAX_DOC_CHARS, quiet=False):
    """Embed a corpus (None: the built-in one), t-SNE it, draw it to ``out`` (a path or a
    list: .png a picture, .html an interactive page) and write the coordinates next to
    each (its name without the extension + .npy/.csv). The default title names the model,
    the corpus and, with labels, the kNN accuracy (k = 10, cosine, one 90/10 split).

    ``model``: a Model or a model directory. ``max_docs``: a random subset (seeded)
    for very big corpora. Returns (coords, labels, written paths)."""
    from .corpus import Corpus
    from .model import Model
    from .modeldir import load
    from .progress import Progress

    outs, kinds = _check_map_outputs(out, perplexity, exaggeration, max_docs, seed)
    if not isinstance(model, Model):
        model = load(model)
    texts, labels = Corpus(corpus, fmt, max_doc_chars, encoding, errors).read()
    if max_docs and len(texts) > max_docs:
        keep = np.sort(np.random.default_rng(seed).permutation(len(texts))[:max_docs])
        texts = [texts[i] for i in keep]
        labels = None if labels is None else [labels[i] for i in keep]
    bar = Progress(len(texts), "embedding", "document", quiet=quiet)
    X = model.encode(texts, progress=bar.update)
    bar.close()
    coords = tsne(X, perplexity=perplexity, seed=seed, exaggeration=exaggeration, quiet=quiet)
    title = title if title is not None else _map_title(model, corpus, X, labels)
    written = []
    for o, kind in zip(outs, kinds):
        if kind == ".html":
            write_html(coords, texts, labels, o, title)
        else:
            plot_map(coords, labels, o, title)
        stem = os.path.splitext(o)[0]
        written += [o] + ([] if stem + ".npy" in written else write_coords(coords, labels, stem))
    return coords, labels, written


def _check_map_outputs(out, perplexity, exaggeration, max_docs, seed):
    """The outputs and options of a map, checked before the slow part: (paths, their kinds)."""
    from .files import check_output
    outs = [out] if isinstance(out, str) else list(out)
    for o in outs:
        check_output(o, (".png", ".html"))
    for name, v in (("--perplexity", perplexity), ("--exaggeration", exaggeration)):
        if v is not None and not (isinstance(v, (int, float)) and 0 < v < float("inf")):
            raise MinembedError(f"{name} must be a positive number, got {v}")
    if max_docs is not None and max_docs < 5 or not 0 <= seed < 2 ** 63:
        raise MinembedError(f"--max-docs must be at least 5 and --seed from 0 to 2^63 - 1, got "
                            f"{max_docs} and {seed}")
    kinds = [os.path.splitext(o)[1].lower() for o in outs]
    if ".png" in kinds:
        _figure((1, 1))  # fail early, before the slow part, if a package is missing
    if ".html" in kinds:
        _need("plotly.graph_objects", "HTML maps")
    return outs, kinds


def _map_title(model, corpus, X, labels):
    """The model, the corpus, its size and labels, and the kNN accuracy of one split."""
    from sklearn import config_context

    from .evaluate import K, knn_accuracy
    name = os.path.basename(os.path.normpath(model.path)) if model.path else "model"
    where = "the built-in corpus" if corpus is None else os.path.basename(corpus)
    title = f"{name} on {where}: {len(X):,} documents"
    if labels is not None:
        title += f", {len(set(labels))} labels"
        if len(labels) >= 2 * K and len(set(labels)) > 1:
            with config_context(working_memory=128):  # not 1 GB of distances
                acc = knn_accuracy(X, labels, metric="cosine")
            title += f", kNN accuracy {100 * acc:.1f} % (k = {K}, cosine, one 90/10 split)"
    return title


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
