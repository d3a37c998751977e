"""The paper's comparison, run with this project's own code on a labelled corpus.

    rows  <- TF-IDF, TF-IDF -> SVD(100) -> L2          (baselines, no training)
             untrained bag model                        (random table, mean pooling)
             bag model + crops
             transformer from scratch + crops / + dropout positives / + masking
    each  -> kNN accuracy (k = 10, Euclidean and cosine), linear probe, on the
             fixed 90/10 split of `minembed.evaluate`; training steps and time

Training is *budgeted*: the whole comparison should end within ``budget_minutes``.
Before a model kind is trained for real, a few steps of it are timed (a
calibration run) together with the time to embed a sample of the corpus; each
training run then gets a share of the time that is left (after the evaluations
still to come) and is given ``max_steps`` = share / seconds-per-step, capped at
its target number of epochs. The runs of one table that use the same encoder
(the three transformer rows; the values of a sweep) train the same number of
steps, decided at the first of them, so that they are compared fairly; time a
group leaves unused goes to the runs after it.
``max_steps`` ends the learning-rate schedule too, so a short run still decays
to 0. The steps and epochs actually run are reported in the table.

Sweeps (the paper's figures) train one model per value of one setting, on the
bag model by default (it is the one that trains in seconds on a CPU):
temperature, sentences per crop, learning rate, masking fraction.

Everything is one call away: ``run_comparison(...)`` returns the rows (and the
sweep tables), ``write_tables`` writes them as JSON and Markdown.
"""
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time

import numpy as np

from . import evaluate
from .errors import MinembedError
from .model import Model, atomic_write_bytes, atomic_write_json, encoder_module
from .train import TrainConfig, auto_epochs, cache_dir, train

# ---------------------------------------------------------------------------
# settings

FULL = dict(
    budget_minutes=30.0,
    max_docs=None,
    vocab_size=8192,
    # `minembed train`'s defaults (batch 128, lr 0.1, epochs for >= 800 steps; see the README)
    bag=dict(model="bag", dim=256),
    # small enough to train a few epochs in minutes on a CPU (the paper's is BERT-base)
    transformer=dict(model="transformer", dim=128, layers=2, heads=4, ffn=512, max_len=64,
                     batch_size=64, epochs=10, lr=5e-4),
    weights=dict(bag=1.0, transformer=3.0),  # shares of the training time
    calibration_steps=dict(bag=6, transformer=4),
)
FAST = dict(  # a smoke test: small models, a subset of the corpus, ~1-2 minutes on 2 CPU cores
    budget_minutes=1.25,
    max_docs=800,
    vocab_size=2048,
    bag=dict(model="bag", dim=64, batch_size=64, epochs=5),
    transformer=dict(model="transformer", dim=64, layers=1, heads=2, ffn=128, max_len=64,
                     batch_size=32, epochs=2, lr=1e-3),
    weights=dict(bag=1.0, transformer=2.0),
    calibration_steps=dict(bag=3, transformer=3),
)
MIN_STEPS = 5  # a trained row runs at least this many steps, whatever the budget

# (configuration name, model kind, TrainConfig overrides)
MAIN_RUNS = [
    ("bag + crops", "bag", dict(positives="crops")),
    ("transformer + crops", "transformer", dict(positives="crops")),
    ("transformer + dropout", "transformer", dict(positives="dropout")),
    ("transformer + masking", "transformer", dict(positives="mask", mask_frac=0.3)),
]

# sweep name -> (TrainConfig field, values, how a value is shown, extra overrides)
SWEEPS = {
    "temperature": ("scale", [1 / 0.005, 1 / 0.05, 1 / 0.5, 1 / 5.0],
                    lambda s: f"tau={1 / s:g}", {}),
    "crop-sentences": ("crop_sentences", [1, 2, 3, 4], lambda v: f"{v} sentence(s)", {}),
    "lr": ("lr", None, lambda v: f"lr={v:g}", {}),  # values depend on the model: LR_VALUES
    "mask-frac": ("mask_frac", [0.1, 0.2, 0.4, 0.6, 0.8], lambda v: f"mask {v:.0%}",
                  dict(positives="mask")),
}
LR_VALUES = {"bag": [0.005, 0.05, 0.5, 5.0], "transformer": [5e-5, 2e-4, 5e-4, 2e-3]}

# the paper's kNN accuracies (ICLR abstracts), for the Markdown table
PAPER_KNN = {
    "bag + crops": "57.3 (10 ep)",
    "transformer + crops": "57.1 (BERT, 10 ep)",
    "transformer + dropout": "46.8 (MPNet, pretrained)",
    "TF-IDF": "60.0",
    "TF-IDF + SVD + L2": "62.4",
}


# ---------------------------------------------------------------------------
# the corpus

def load_labelled(corpus=None, fmt="auto"):
    """(texts, labels, name) of a labelled corpus file, or of the built-in corpus (None)."""
    texts, labels = evaluate.labelled_corpus(corpus, fmt, purpose="the comparison")
    name = ("built-in corpus (numpy/scipy/scikit-learn docstrings)" if corpus is None
            else os.fspath(corpus))
    return texts, labels, name


def _subset(texts, labels, max_docs, seed=0):
    if not max_docs or len(texts) <= max_docs:
        return texts, labels
    keep = np.sort(np.random.default_rng(seed).permutation(len(texts))[:max_docs])
    return [texts[i] for i in keep], [labels[i] for i in keep]


def _subset_file(texts, labels):
    """The documents as a .jsonl file in the cache, named by its content and written
    once, so that its tokenizer and tokenised form are cached across runs too."""
    lines = [json.dumps({"text": t, "label": lab}, ensure_ascii=False) for t, lab in zip(texts, labels)]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path = os.path.join(cache_dir(), "compare", hashlib.sha1(data).hexdigest()[:20] + ".jsonl")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_bytes(path, data)
    return path


# ---------------------------------------------------------------------------
# measuring one embedding

def probe_accuracy(X, labels):
    """The linear probe; sparse TF-IDF is scaled without centring (that would densify it)."""
    if hasattr(X, "tocsr"):
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
        labels = np.asarray(labels)
        tr, te = evaluate.split(len(labels))
        scaler = StandardScaler(with_mean=False).fit(X[tr])
        clf = LogisticRegression(max_iter=300).fit(scaler.transform(X[tr]), labels[tr])
        return float((clf.predict(scaler.transform(X[te])) == labels[te]).mean())
    return evaluate.linear_probe_accuracy(X, labels)


def _knn_sparse(X, labels, metric):
    # evaluate.knn_accuracy takes len(X), which a scipy sparse matrix refuses
    from sklearn.neighbors import KNeighborsClassifier
    labels = np.asarray(labels)
    tr, te = evaluate.split(len(labels))
    knn = KNeighborsClassifier(n_neighbors=evaluate.K, metric=metric, algorithm="brute")
    knn.fit(X[tr], labels[tr])
    return float((knn.predict(X[te]) == labels[te]).mean())


def measure(X, labels):
    """kNN (both distances) and linear-probe accuracy of embeddings X; seconds taken."""
    t = time.perf_counter()
    if hasattr(X, "tocsr"):
        X = X.tocsr()
        r = {m: _knn_sparse(X, labels, d) for m, d in
             (("knn_euclidean", "euclidean"), ("knn_cosine", "cosine"))}
    else:
        r = evaluate.knn_scores(X, labels)
    r["linear_probe"] = probe_accuracy(X, labels)
    r["eval_seconds"] = round(time.perf_counter() - t, 2)
    return r


def _embed_and_measure(model, texts, labels):
    t = time.perf_counter()
    X = model.encode(texts, batch_size=256, normalize=False)  # raw: Euclidean differs from cosine
    r = measure(X, labels)
    r["eval_seconds"] = round(time.perf_counter() - t, 2)
    return r


# ---------------------------------------------------------------------------
# budgeted training

def _settings(cfg):
    """A short description of a TrainConfig for the table."""
    c = cfg.resolved()
    s = f"dim {c.dim}, batch {c.batch_size}, lr {c.lr:g}, tau {1 / c.scale:g}"
    if c.model == "transformer":
        s += f", {c.layers}L/{c.heads}H/ffn {c.ffn}, T<={c.max_len}"
    if c.positives == "mask":
        s += f", mask {c.mask_frac:g}"
    if c.crop_sentences != 2:
        s += f", {c.crop_sentences} sent/crop"
    return s


def _read_log(model_dir):
    with open(os.path.join(model_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


class _Budget:
    """Splits the time left among the training runs still to come."""

    def __init__(self, seconds, train_path, texts, settings, work_dir, say):
        self.total = seconds
        self.deadline = time.perf_counter() + seconds
        self.train_path, self.texts, self.settings = train_path, texts, settings
        self.work_dir, self.say = work_dir, say
        self.calibrated = {}  # model kind -> dict(step_s, encode_s, steps_per_epoch, model)
        self.probe_s = 1.0  # seconds per kNN + probe evaluation (updated as they are measured)
        self.n = 0
        self.group_steps = {}  # group -> (steps, steps per epoch)

    def left(self):
        return self.deadline - time.perf_counter()

    def calibrate(self, kind):
        """Time a few training steps and the embedding of a sample of the corpus."""
        if kind in self.calibrated:
            return self.calibrated[kind]
        n_cal = self.settings["calibration_steps"][kind]
        cfg = TrainConfig(**dict(self.settings[kind], vocab_size=self.settings["vocab_size"],
                                 epochs=1, max_steps=n_cal)).resolved()
        out = os.path.join(self.work_dir, f"calibrate-{kind}")
        self.say(f"timing {n_cal} steps of the {kind} model")
        model = train(self.train_path, out, cfg, force=True, quiet=True)
        times = [r["time"] for r in _read_log(out)]
        step_s = (times[-1] - times[0]) / max(1, len(times) - 1) if len(times) > 1 else times[0]
        sample = [self.texts[i] for i in
                  np.random.default_rng(0).permutation(len(self.texts))[:256]]
        t = time.perf_counter()
        model.encode(sample, batch_size=256)
        encode_s = (time.perf_counter() - t) * len(self.texts) / max(1, len(sample))
        st = model.config["corpus"]
        spe = max(1, (st["sentence_crops"] + st["token_spans"]) // cfg.batch_size)
        c = dict(step_s=max(step_s, 1e-4), encode_s=encode_s, steps_per_epoch=spe, model=model)
        self.say(f"  {kind}: {step_s:.3f} s/step, {spe} steps/epoch, ~{encode_s:.1f} s to embed "
                 f"{len(self.texts):,} documents")
        self.calibrated[kind] = c
        return c

    def steps_for(self, kind, cfg, weight, later, n_same=1):
        """Steps for this run: its share of the time left, capped at its epochs.

        ``later``: (kind, weight) of the training runs after this one; ``n_same``:
        how many runs (this one and the next n_same - 1) share one step count, so
        that configurations compared with each other train equally long."""
        c = self.calibrate(kind)
        est = {k: v["encode_s"] for k, v in self.calibrated.items()}
        reserve = c["encode_s"] + self.probe_s + sum(
            est.get(k, c["encode_s"]) + self.probe_s for k, _ in later)
        share = weight * n_same / (weight + sum(w for _, w in later))
        seconds = max(0.0, self.left() - reserve) * share / n_same
        spe = c["steps_per_epoch"]
        cap = spe * (cfg.epochs or auto_epochs(cfg.model, spe))
        # at least MIN_STEPS; at least one epoch when that is cheap (5 % of the whole budget)
        floor = max(MIN_STEPS, spe) if spe * c["step_s"] <= 0.05 * self.total else MIN_STEPS
        return min(cap, max(floor, int(seconds / c["step_s"]))), spe

    def train(self, name, kind, cfg, weight, later, group=None, n_same=1):
        """Train one budgeted run; returns (model, info dict). Runs of one ``group``
        train the same number of steps (decided at the first, for ``n_same`` runs)."""
        if group is not None and group in self.group_steps:
            steps, spe = self.group_steps[group]
        else:
            steps, spe = self.steps_for(kind, cfg, weight, later, n_same)
            if group is not None:
                self.group_steps[group] = steps, spe
        cfg = dataclasses.replace(cfg, epochs=max(1, math.ceil(steps / spe)), max_steps=steps)
        self.n += 1
        out = os.path.join(self.work_dir, f"run-{self.n:02d}")
        self.say(f"training {name}: {steps} steps ({steps / spe:.2f} epochs)")
        model = train(self.train_path, out, cfg, force=True, quiet=True)
        log = _read_log(out)
        if len(log) > 1:  # the machine may be busier than during calibration: learn from the run
            self.calibrated[kind]["step_s"] = (log[-1]["time"] - log[0]["time"]) / (len(log) - 1)
        info = dict(steps=model.config["training"]["steps"],
                    epochs=round(model.config["training"]["steps"] / spe, 2),
                    train_seconds=model.config["training"]["seconds"],
                    final_loss=round(float(np.mean([r["loss"] for r in log[-5:]])), 4))
        return model, info


# ---------------------------------------------------------------------------
# the comparison

def run_comparison(corpus=None, fast=False, budget_minutes=None, fmt="auto", sweeps=(),
                   sweep_model="bag", main=True, max_docs=None, work_dir=None, keep_models=False,
                   seed=0, say=None):
    """Train and evaluate the paper's configurations on a labelled corpus.

    corpus: a labelled .jsonl path, or None for the built-in corpus.
    fast: small models on a subset (<= 1000 documents), for smoke tests.
    budget_minutes: the whole run's time budget (default 30, fast 1.5).
    sweeps: names from SWEEPS ("temperature", "crop-sentences", "lr", "mask-frac").
    main: run the main comparison (False: only the sweeps).
    Returns a dict: meta, rows (list of dicts, one per configuration), sweeps
    (name -> list of rows).
    """
    say = say or (lambda msg: None)
    settings = dict(FAST if fast else FULL)
    for name in sweeps:
        if name not in SWEEPS:
            raise MinembedError(f"unknown sweep {name!r} (expected one of {', '.join(SWEEPS)})")
    if sweep_model not in ("bag", "transformer"):
        raise MinembedError(f"sweep model must be bag or transformer, got {sweep_model!r}")
    if not main and not sweeps:
        raise MinembedError("nothing to do: no main comparison and no sweeps")
    budget = settings["budget_minutes"] if budget_minutes is None else float(budget_minutes)
    if not budget > 0:
        raise MinembedError(f"the budget must be a positive number of minutes, got {budget_minutes}")
    t_start = time.perf_counter()

    texts, labels, corpus_name = load_labelled(corpus, fmt)
    n_all = len(texts)
    texts, labels = _subset(texts, labels, max_docs or settings["max_docs"], seed)
    if len(texts) < 2 * evaluate.K:
        raise MinembedError(f"the comparison needs at least {2 * evaluate.K} labelled documents, "
                            f"got {len(texts)}")
    own_work = work_dir is None
    work_dir = work_dir or tempfile.mkdtemp(prefix="minembed-compare-")
    os.makedirs(work_dir, exist_ok=True)
    try:
        if corpus is None and len(texts) == n_all:
            train_path = None  # the built-in corpus, tokenised once and cached
        elif len(texts) == n_all and fmt in ("auto", "jsonl"):
            train_path = corpus
        else:  # a subset (or an explicit format): train on exactly the documents evaluated
            train_path = _subset_file(texts, labels)
        b = _Budget(budget * 60, train_path, texts, settings, work_dir, say)

        def cfg_of(kind, **over):
            return TrainConfig(**dict(settings[kind], vocab_size=settings["vocab_size"], seed=seed,
                                      **over))

        # the list of training runs, so that each knows which come after it
        plan = []
        if main:
            plan += [("main", name, kind, cfg_of(kind, **over), settings["weights"][kind])
                     for name, kind, over in MAIN_RUNS]
        for sw in sweeps:
            field, values, show, over = SWEEPS[sw]
            values = LR_VALUES[sweep_model] if values is None else values
            plan += [(sw, show(v), sweep_model, cfg_of(sweep_model, **dict(over, **{field: v})),
                      settings["weights"][sweep_model]) for v in values]

        rows, sweep_rows = [], {sw: [] for sw in sweeps}
        if main:
            for name, X in (("TF-IDF", None), ("TF-IDF + SVD + L2", 100)):
                t = time.perf_counter()
                E = evaluate.tfidf(texts, svd_dim=X, l2=X is not None)
                emb_s = time.perf_counter() - t
                r = measure(E, labels)
                b.probe_s = max(b.probe_s, r["eval_seconds"]) if X else b.probe_s
                rows.append(dict(configuration=name, model="tfidf", settings=(
                    "sublinear tf" + (", SVD 100, L2" if X else "")), steps=0, epochs=0,
                    train_seconds=round(emb_s, 2), final_loss=None, **r))
                say(_row_line(rows[-1]))
            c = b.calibrate("bag")
            cfg = cfg_of("bag").resolved()
            enc_cfg = dict(c["model"].config)
            params = encoder_module("bag").init_params(enc_cfg, np.random.default_rng([seed, 0]))
            untrained = Model(enc_cfg, params, c["model"].tokenizer)
            r = _embed_and_measure(untrained, texts, labels)
            b.probe_s = max(b.probe_s, r["eval_seconds"] - c["encode_s"])
            rows.append(dict(configuration="untrained bag", model="bag",
                             settings=f"random table, dim {cfg.dim}, std 0.02", steps=0, epochs=0,
                             train_seconds=0.0, final_loss=None, **r))
            say(_row_line(rows[-1]))

        for i, (grp, name, kind, cfg, weight) in enumerate(plan):
            later = [(k, w) for _, _, k, _, w in plan[i + 1:]]
            group = (grp, kind)  # one step count for the runs of a table with one encoder
            n_same = sum(1 for g, _, k, _, _ in plan if (g, k) == group)
            model, info = b.train(name, kind, cfg, weight, later, group, n_same)
            r = _embed_and_measure(model, texts, labels)
            row = dict(configuration=name, model=kind, settings=_settings(cfg), **info, **r)
            (rows if grp == "main" else sweep_rows[grp]).append(row)
            say(_row_line(row))
            if not keep_models:
                shutil.rmtree(model.path, ignore_errors=True)

        meta = dict(corpus=corpus_name, documents=len(texts), corpus_documents=n_all,
                    labels=len(set(labels)), fast=bool(fast), budget_minutes=budget,
                    total_seconds=round(time.perf_counter() - t_start, 1),
                    vocab_size=settings["vocab_size"], seed=seed, k=evaluate.K,
                    split=f"{1 - evaluate.TEST_SIZE:.0%}/{evaluate.TEST_SIZE:.0%}, seed {evaluate.SPLIT_SEED}",
                    machine=machine(), date=datetime.date.today().isoformat(),
                    sweep_model=sweep_model if sweeps else None)
        return dict(meta=meta, rows=rows, sweeps=sweep_rows,
                    work_dir=work_dir if keep_models else None)
    finally:
        if own_work and not keep_models:
            shutil.rmtree(work_dir, ignore_errors=True)


def machine():
    """The machine the numbers were measured on, in words."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {n} CPU cores available, {platform.system()}, Python {platform.python_version()}, NumPy {np.__version__}"


# ---------------------------------------------------------------------------
# tables

COLUMNS = [("configuration", "configuration", "{}"), ("knn_euclidean", "kNN eucl. %", "pct"),
           ("knn_cosine", "kNN cos. %", "pct"), ("linear_probe", "probe %", "pct"),
           ("steps", "steps", "{}"), ("epochs", "epochs", "{:g}"),
           ("train_seconds", "train s", "{:.1f}"), ("final_loss", "loss", "{:.3f}")]


def _fmt(value, how):
    if value is None:
        return "-"
    if how == "pct":
        return f"{100 * value:.1f}"
    return how.format(value)


def _row_line(row):
    return (f"  {row['configuration']:24s} kNN {100 * row['knn_euclidean']:5.1f} / "
            f"{100 * row['knn_cosine']:5.1f} %  probe {100 * row['linear_probe']:5.1f} %  "
            f"{row['steps']} steps, {row['train_seconds']:.1f} s")


def format_table(rows, markdown=False, paper=False):
    """The rows as a plain-text table (or Markdown, optionally with the paper's numbers)."""
    cols = list(COLUMNS)
    head = [h for _, h, _ in cols] + (["paper kNN %"] if paper else []) + \
        (["settings"] if markdown else [])
    body = []
    for r in rows:
        cells = [_fmt(r.get(k), how) for k, _, how in cols]
        if paper:
            cells.append(PAPER_KNN.get(r["configuration"], "-"))
        if markdown:
            cells.append(r.get("settings", ""))
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(head)]
    fmt_line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                       for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt_line(head), fmt_line(["-" * w for w in widths])] +
                     [fmt_line(c) for c in body])


def _meta_line(meta):
    return (f"{meta['corpus']}: {meta['documents']:,} documents, {meta['labels']} labels; "
            f"kNN k={meta['k']}, split {meta['split']}; budget {meta['budget_minutes']:g} min, "
            f"took {meta['total_seconds']:.0f} s; {meta['machine']}")


def write_tables(result, out_dir, command=None):
    """Write compare.json / compare.md (and sweep-NAME.json / .md) into out_dir; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(result["meta"], command=command)
    written = []
    tables = []
    if result["rows"]:
        tables.append(("compare", "Comparison", result["rows"], True))
    for name, rows in result["sweeps"].items():
        tables.append((f"sweep-{name}", f"Sweep: {name} ({meta['sweep_model']} model)", rows, False))
    for stem, title, rows, paper in tables:
        p = os.path.join(out_dir, stem + ".json")
        atomic_write_json(p, dict(meta=meta, rows=rows))
        md = [f"## {title}", "", _meta_line(meta) + ".", ""]
        if command:
            md += [f"Command: `{command}`", ""]
        md += [format_table(rows, markdown=True, paper=paper), ""]
        pm = os.path.join(out_dir, stem + ".md")
        atomic_write_bytes(pm, "\n".join(md).encode("utf-8"))
        written += [p, pm]
    return written
