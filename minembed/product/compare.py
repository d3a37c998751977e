"""The paper's comparison, run with this project's own code on a labelled corpus.

    rows  <- TF-IDF, TF-IDF -> SVD(100) -> L2, majority class   (no training)
             untrained bag model                              (random table, mean pooling)
             bag model + crops (the paper's), + a crop and the rest of its document (minembed's)
             transformer from scratch + crops / + dropout positives / + masking
    each  -> kNN accuracy (k = 10, Euclidean and cosine) and a linear probe on the
             fixed 90/10 split of `minembed.product.evaluate`; training steps and time

Every trained row runs a number of steps fixed by the corpus (the bag model's
40 epochs, the transformer's 420 steps), so the table is the same on any machine;
only the seconds differ. Sweeps (the paper's figures)
train one model per value of one setting, on the bag model by default:
temperature, sentences per crop, learning rate, masking fraction.
``run_comparison(...)`` returns the rows; ``write_tables`` writes them as JSON and Markdown.
"""
import datetime
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np

from . import evaluate
from .corpus import Corpus, cache_subdir
from ..errors import MinembedError
from .files import atomic_write_bytes, atomic_write_json
from .model import untrained
from .modeldir import read_log
from .run import train
from .settings import TrainConfig

FULL = dict(
    max_docs=None, vocab_size=16384,
    # `minembed train`'s settings, one table (the paper's)
    bag=dict(model="bag", members=1),
    # the default transformer (small enough to train in minutes on a CPU; the paper's is
    # BERT-base), from scratch as the paper's, so that the positives alone differ
    transformer=dict(model="transformer", bag_init=False, max_steps=420, epochs=100),
)
FAST = dict(  # a smoke test: small models, a subset of the corpus, ~1 minute on 2 CPU cores
    max_docs=800, vocab_size=2048,
    bag=dict(model="bag", dim=64, batch_size=64, max_steps=60, epochs=100, members=1),
    transformer=dict(model="transformer", dim=64, layers=1, heads=2, ffn=128, max_len=64,
                     batch_size=32, lr=1e-3, max_steps=25, epochs=100, bag_init=False),
)
# the paper's pairs: two crops (spans of 10-50 %)
CROPS = dict(positives="crops", span_min=0.1, span_max=0.5)
MAIN_RUNS = [  # (configuration name, model kind, TrainConfig overrides)
    ("bag + crops", "bag", CROPS),
    ("bag + crop and rest", "bag", dict(positives="rest")),  # minembed train's pairs
    ("transformer + crops", "transformer", CROPS),
    ("transformer + dropout", "transformer", dict(CROPS, positives="dropout")),
    ("transformer + masking", "transformer", dict(CROPS, positives="mask", mask_frac=0.3)),
]
SWEEPS = {  # name -> (TrainConfig field, values, how a value is shown, extra overrides)
    "temperature": ("scale", [1 / 0.005, 1 / 0.05, 1 / 0.5, 1 / 5.0],
                    lambda s: f"tau={1 / s:g}", CROPS),
    "crop-sentences": ("crop_sentences", [1, 2, 3, 4], lambda v: f"{v} sentence(s)", CROPS),
    "lr": ("lr", None, lambda v: f"lr={v:g}", CROPS),  # values depend on the model: LR_VALUES
    "mask-frac": ("mask_frac", [0.1, 0.2, 0.4, 0.6, 0.8], lambda v: f"mask {v:.0%}",
                  dict(CROPS, positives="mask")),
}
LR_VALUES = {"bag": [0.005, 0.05, 0.5, 5.0], "transformer": [5e-5, 2e-4, 5e-4, 2e-3]}
PAPER_KNN = {  # the paper's kNN accuracies (ICLR abstracts), for the Markdown table
    "bag + crops": "57.3 (10 ep)", "transformer + crops": "57.1 (BERT, 10 ep)",
    "transformer + dropout": "46.8 (MPNet, pretrained)", "TF-IDF": "60.0",
    "TF-IDF + SVD + L2": "62.4",
}


def measure(X, labels):
    """kNN (both distances) and linear-probe accuracy of embeddings X; seconds taken."""
    t = time.perf_counter()
    r = evaluate.knn_scores(X, labels)
    r["linear_probe"] = evaluate.linear_probe_accuracy(X, labels)
    r["eval_seconds"] = round(time.perf_counter() - t, 2)
    return r


def _settings(cfg):
    """A short description of a TrainConfig for the table."""
    c = cfg.resolved()
    s = f"dim {c.dim}, batch {c.batch_size}, lr {c.lr:g}, tau {1 / c.scale:g}"
    if c.model == "transformer":
        s += f", {c.layers}L/{c.heads}H/ffn {c.ffn}, T<={c.max_len}"
    if c.positives == "mask":
        s += f", mask {c.mask_frac:g}"
    if c.positives == "rest":
        s += f", crop (spans {c.span_min:g}-{c.span_max:g}) and the rest"
    return s + (f", {c.crop_sentences} sent/crop" if c.crop_sentences != 2 else "")


def _subset_file(texts, labels):
    """The documents as a .jsonl file in the cache, named by its content, so that its
    tokenizer and tokenised form are cached across runs too."""
    data = "".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n"
                   for t, lab in zip(texts, labels)).encode("utf-8")
    path = os.path.join(cache_subdir("compare"), hashlib.sha1(data).hexdigest()[:20] + ".jsonl")
    if not os.path.isfile(path):
        atomic_write_bytes(path, data)
    return path


def run_comparison(corpus=None, fast=False, fmt="auto", sweeps=(), sweep_model="bag", main=True,
                   max_docs=None, work_dir=None, keep_models=False, seed=0, say=None):
    """Train and evaluate the paper's configurations on a labelled corpus (a .jsonl
    path, or None for the built-in one). Returns a dict: meta, rows (one per
    configuration), sweeps (name -> rows)."""
    for name in sweeps:
        if name not in SWEEPS:
            raise MinembedError(f"unknown sweep {name!r} (expected one of {', '.join(SWEEPS)})")
    if sweep_model not in ("bag", "transformer"):
        raise MinembedError(f"sweep model must be bag or transformer, got {sweep_model!r}")
    if not main and not sweeps:
        raise MinembedError("nothing to do: no main comparison and no sweeps")
    run = Comparison(corpus, FAST if fast else FULL, fmt, max_docs, seed, keep_models, say)
    own_work = work_dir is None
    run.work_dir = work_dir or tempfile.mkdtemp(prefix="minembed-compare-")
    os.makedirs(run.work_dir, exist_ok=True)
    try:
        rows = run.main_rows() if main else []
        sweep_rows = {sw: run.sweep_rows(sw, sweep_model) for sw in sweeps}
        meta = dict(corpus=run.source.name, documents=len(run.texts), corpus_documents=run.n_all,
                    labels=len(set(run.labels)), fast=bool(fast),
                    total_seconds=round(time.perf_counter() - run.t_start, 1),
                    vocab_size=run.settings["vocab_size"], seed=seed, k=evaluate.K,
                    split=f"{1 - evaluate.TEST_SIZE:.0%}/{evaluate.TEST_SIZE:.0%}, seed "
                          f"{evaluate.SPLIT_SEED}",
                    machine=machine(), date=datetime.date.today().isoformat(),
                    sweep_model=sweep_model if sweeps else None)
        return dict(meta=meta, rows=rows, sweeps=sweep_rows,
                    work_dir=run.work_dir if keep_models else None)
    finally:
        if own_work and not keep_models:
            shutil.rmtree(run.work_dir, ignore_errors=True)


class Comparison:
    """The corpus of a comparison (a subset of it with ``max_docs``), and its rows."""

    def __init__(self, corpus, settings, fmt, max_docs, seed, keep_models, say):
        self.settings, self.seed, self.keep_models = settings, seed, keep_models
        self.say, self.t_start, self.runs, self.work_dir = (say or (lambda msg: None),
                                                            time.perf_counter(), 0, None)
        self.source = Corpus(corpus, fmt)
        self.texts, self.labels = self.source.labelled("the comparison")
        self.n_all = len(self.texts)
        max_docs = max_docs or settings["max_docs"]
        if max_docs and self.n_all > max_docs:
            keep = np.sort(np.random.default_rng(seed).permutation(self.n_all)[:max_docs])
            self.texts, self.labels = [self.texts[i] for i in keep], [self.labels[i] for i in keep]
        if len(self.texts) < 2 * evaluate.K:
            raise MinembedError(f"the comparison needs at least {2 * evaluate.K} labelled "
                                "documents")
        # train on exactly the documents evaluated: the file itself, or a subset written
        # to the cache
        self.train_path = corpus if len(self.texts) == self.n_all and fmt in ("auto", "jsonl") \
            else _subset_file(self.texts, self.labels)

    def cfg_of(self, kind, **over):
        s = self.settings
        return TrainConfig(**dict(s[kind], vocab_size=s["vocab_size"], seed=self.seed, **over))

    def trained_row(self, name, kind, cfg):
        """Train one configuration and measure it: (row, model)."""
        self.say(f"training {name}" + (f" ({cfg.max_steps} steps)" if cfg.max_steps else ""))
        self.runs += 1
        model = train(self.train_path, os.path.join(self.work_dir, f"run-{self.runs:02d}"),
                      cfg, force=True, quiet=True)
        log = read_log(model.path)
        X = model.encode(self.texts, normalize=False)  # raw vectors: Euclidean differs from cosine
        t = model.config["training"]
        row = dict(configuration=name, model=kind, settings=_settings(cfg), steps=t["steps"],
                   epochs=round(t["steps"] / t["members"] / t["steps_per_epoch"], 2),
                   train_seconds=t["seconds"],
                   final_loss=round(float(np.mean([r["loss"] for r in log[-5:]])), 4),
                   **measure(X, self.labels))
        if not self.keep_models:
            shutil.rmtree(model.path, ignore_errors=True)
        self.say(_row_line(row))
        return row, model

    def main_rows(self):
        """TF-IDF, majority class, the untrained bag model and MAIN_RUNS."""
        rows = []
        for name, svd in (("TF-IDF", None), ("TF-IDF + SVD + L2", 100)):
            t = time.perf_counter()
            E = evaluate.tfidf(self.texts, svd_dim=svd, l2=svd is not None)
            rows.append(dict(configuration=name, model="tfidf", settings="sublinear tf" +
                             (", SVD 100, L2" if svd else ""), steps=0, epochs=0,
                             train_seconds=round(time.perf_counter() - t, 2), final_loss=None,
                             **measure(E, self.labels)))
            self.say(_row_line(rows[-1]))
        maj = evaluate.majority_accuracy(self.labels)
        rows.append(dict(configuration="majority class", model="-", settings="", steps=0, epochs=0,
                         train_seconds=0.0, final_loss=None, knn_euclidean=maj, knn_cosine=maj,
                         linear_probe=maj, eval_seconds=0.0))
        for name, kind, over in MAIN_RUNS:
            row, model = self.trained_row(name, kind, self.cfg_of(kind, **over))
            rows.append(row)
            if name == "bag + crops":  # the same table, untrained: what training added
                rows.insert(len(rows) - 1, dict(
                    configuration="untrained bag", model="bag", settings=f"random table, dim "
                    f"{model.dim}, std 0.02", steps=0, epochs=0, train_seconds=0.0, final_loss=None,
                    **measure(untrained(model).encode(self.texts, normalize=False), self.labels)))
        return rows

    def sweep_rows(self, sweep, model):
        field, values, show, over = SWEEPS[sweep]
        return [self.trained_row(show(v), model, self.cfg_of(model, **dict(over, **{field: v})))[0]
                for v in (LR_VALUES[model] if values is None else values)]


def machine():
    """The machine the numbers were measured on, in words."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu}, {n} CPU cores, {platform.system()}, Python {platform.python_version()}, "
            f"NumPy {np.__version__}")


COLUMNS = [("configuration", "configuration", "{}"), ("knn_euclidean", "kNN eucl. %", "pct"),
           ("knn_cosine", "kNN cos. %", "pct"), ("linear_probe", "probe %", "pct"),
           ("steps", "steps", "{}"), ("epochs", "epochs", "{:g}"),
           ("train_seconds", "train s", "{:.1f}"), ("final_loss", "loss", "{:.3f}")]


def _fmt(value, how):
    return "-" if value is None else f"{100 * value:.1f}" if how == "pct" else how.format(value)


def _row_line(row):
    return (f"  {row['configuration']:24s} kNN {100 * row['knn_euclidean']:5.1f} / "
            f"{100 * row['knn_cosine']:5.1f} %  probe {100 * row['linear_probe']:5.1f} %  "
            f"{row['steps']} steps, {row['train_seconds']:.1f} s")


def format_table(rows, markdown=False, paper=False):
    """The rows as a plain-text table (or Markdown, optionally with the paper's numbers)."""
    head = ([h for _, h, _ in COLUMNS] + (["paper kNN %"] if paper else [])
            + (["settings"] if markdown else []))
    body = [[_fmt(r.get(k), how) for k, _, how in COLUMNS] +
            ([PAPER_KNN.get(r["configuration"], "-")] if paper else []) +
            ([r.get("settings", "")] if markdown else []) for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                         ["| " + " | ".join(c) + " |" for c in body])
    widths = [max([len(h)] + [len(c[i]) for c in body]) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(c) for c in body])


def write_tables(result, out_dir, command=None):
    """Write compare.json / compare.md (and sweep-NAME.json / .md) into out_dir; returns the
    paths."""
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(result["meta"], command=command)
    tables = ([("compare", "Comparison", result["rows"], True)] if result["rows"] else []) + \
        [(f"sweep-{name}", f"Sweep: {name} ({meta['sweep_model']} model)", rows, False)
         for name, rows in result["sweeps"].items()]
    written = []
    for stem, title, rows, paper in tables:
        p = os.path.join(out_dir, stem + ".json")
        atomic_write_json(p, dict(meta=meta, rows=rows))
        md = [f"## {title}", "",
              f"{meta['corpus']}: {meta['documents']:,} documents, {meta['labels']} "
              f"labels; kNN k={meta['k']}, split {meta['split']}; took {meta['total_seconds']:.0f} "
              f"s; {meta['machine']}.", ""] + ([f"Command: `{command}`", ""] if command else []) + \
             [format_table(rows, markdown=True, paper=paper), ""]
        pm = os.path.join(out_dir, stem + ".md")
        atomic_write_bytes(pm, "\n".join(md).encode("utf-8"))
        written += [p, pm]
    return written
