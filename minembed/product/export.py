"""Models and vectors out of minembed (docs/export.md): a bag model as a directory
that sentence-transformers or model2vec loads unchanged, quantised vectors, and an
input of any size embedded into a .npy file with bounded memory.

Exports hold the table as float32 safetensors and the tokenizer.json as it is. Both
libraries tokenise with add_special_tokens=False, average the token rows and
L2-normalise, as Model.encode does; but model2vec's StaticModel.tokenize drops [UNK]
tokens first, so a text with characters the tokenizer never saw gets another vector.

Quantised vectors, x a unit vector of dimension k: float16, a cast; int8,
q_d = round(127 x_d / s_d) clipped to +-127 (x_d ~ q_d s_d / 127), s_d = max |x_d|
over a calibration corpus, stored in the model directory (int8_scales.json, per k)
so every call quantises alike; binary, the sign bits, 8 to a byte (np.packbits).
"""
import json
import os
import shutil
import warnings

import numpy as np

from ..core.backend import to_numpy
from ..errors import MinembedError
from .files import NpyWriter, atomic_path, atomic_write_bytes, weights_bytes
from .modeldir import add_file
from .progress import Progress
from .runtime import tuned

TARGETS = ("sentence-transformers", "model2vec")
DTYPES = ("float32", "float16", "int8", "binary")
SCALES = "int8_scales.json"
MIN_CALIBRATION = 100    # documents: see calibrate
WELL_CALIBRATED = 1000   # fewer: a warning


def _json(obj):
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def export(model, to, out_dir, force=False):
    """Write the bag ``model`` to ``out_dir`` in the layout of ``to`` (one of TARGETS);
    ``force`` replaces an earlier export there. Returns the files written."""
    if to not in TARGETS:
        raise MinembedError(f"cannot export to {to!r} (expected one of {', '.join(TARGETS)})")
    if model.config["model"] != "bag":
        raise MinembedError(f"only the bag model can be exported (both libraries average token "
                            f"vectors); this is a {model.config['model']}")
    if model.config.get("pooling", "mean") != "mean":
        raise MinembedError("this model pools sublinearly (trained with --pooling sublinear); "
                            "model2vec and sentence-transformers average every token, so the "
                            "export would not give its vectors")
    table = np.ascontiguousarray(to_numpy(model.params["tok_emb"]), dtype=np.float32)
    norm, tok = bool(model.config.get("normalize", True)), model.tokenizer.to_str().encode("utf-8")
    mark = {"exported_from": "minembed", "dim": model.dim,
            "matryoshka": model.config.get("matryoshka")}
    if to == "model2vec":
        files = {"model.safetensors": weights_bytes({"embeddings": table}), "tokenizer.json": tok,
                 "config.json": _json(dict(model_type="model2vec", architectures=["StaticModel"],
                                           hidden_dim=model.dim, normalize=norm, max_length=None,
                                           embedding_dtype="float32", minembed=mark))}
    else:
        m = [dict(idx=0, name="0", path="0_StaticEmbedding",
                  type="sentence_transformers.models.StaticEmbedding"),
             dict(idx=1, name="1", path="1_Normalize",
                  type="sentence_transformers.models.Normalize")]
        files = {"modules.json": _json(m[:1 + norm]), "0_StaticEmbedding/tokenizer.json": tok,
                 "0_StaticEmbedding/model.safetensors": weights_bytes({"embedding.weight": table}),
                 "config_sentence_transformers.json": _json(dict(
                     similarity_fn_name="cosine", prompts={}, default_prompt_name=None,
                     minembed=mark))}
    files["README.md"] = (f"---\nlibrary_name: {to}\ntags: [minembed, static-embeddings]\n---\n\nA "
                          f"minembed bag model: a text's vector is the mean of its token vectors"
                          f"{', L2-normalised' * norm} ({model.dim} dimensions).\n").encode("utf-8")
    _write_dir(os.path.abspath(out_dir), files, force)
    return sorted(files)


def _is_export(d):
    for name in ("config.json", "config_sentence_transformers.json"):
        try:
            with open(os.path.join(d, name), encoding="utf-8") as f:
                return json.load(f)["minembed"]["exported_from"] == "minembed"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return False


def _write_dir(out_dir, files, force):
    """{relative path: bytes} as the directory ``out_dir``, each file atomically, the
    config naming the layout last; an earlier export there is removed first (force)."""
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        if not _is_export(out_dir):
            raise MinembedError(f"{out_dir} exists and is neither an empty directory nor an "
                                "earlier export")
        if not force:
            raise MinembedError(f"{out_dir} holds an earlier export (--force replaces it)")
        shutil.rmtree(out_dir)
    for name in sorted(files, key=lambda n: n in ("config.json", "modules.json")):
        os.makedirs(os.path.dirname(os.path.join(out_dir, name)), exist_ok=True)
        atomic_write_bytes(os.path.join(out_dir, name), files[name])


def quantize(X, dtype, scales=None):
    """Unit vectors X (N, k) float32 as ``dtype`` (module docstring); int8 needs ``scales`` (k,)."""
    if dtype == "float16":
        return X.astype(np.float16)
    if dtype == "int8":
        return np.clip(np.rint(X * (127 / scales)), -127, 127).astype(np.int8)
    return np.packbits(X > 0, axis=1) if dtype == "binary" else X


def dequantize(Q, dtype, scales=None, dim=None):
    """float32 vectors from ``quantize``'s output: int8 times scales / 127; binary as +-1
    (``dim`` bits, k)."""
    if dtype == "binary":
        return np.unpackbits(Q, axis=1, count=dim).astype(np.float32) * 2 - 1
    return Q.astype(np.float32) * (np.asarray(scales, np.float32) / 127 if dtype == "int8" else 1)


def calibrate(model, texts, dims=()):
    """int8 scales from the unit vectors of ``texts`` for each trained dimension of ``model``
    (its dim, its Matryoshka dims) and ``dims``, stored in its directory; {k: scales}. At least
    MIN_CALIBRATION texts: the largest |x_d| of a few documents is one most others exceed."""
    if len(texts) < MIN_CALIBRATION:
        raise MinembedError(f"int8 scales need at least {MIN_CALIBRATION} documents to calibrate "
                            f"on, got {len(texts)}: with fewer, a large share of other documents' "
                            f"values would be clipped to +-127 (calibrate on text like what you "
                            f"will embed)")
    if len(texts) < WELL_CALIBRATED:
        warnings.warn(f"int8 scales calibrated on {len(texts):,} documents: expect around "
                      f"{100 / len(texts):.1g} % of values clipped to +-127 (measured: 1 % from "
                      f"100 documents, 0.1 % from 1,000; docs/export.md)", stacklevel=2)
    X = model.encode(texts, normalize=False)
    scales = {}
    for k in sorted(set(model.config.get("matryoshka", [])) | {model.dim} | set(dims)):
        Xk = X[:, :model.check_dim(k)]
        Xk = Xk / np.maximum(np.linalg.norm(Xk, axis=1, keepdims=True), 1e-12)
        scales[str(k)] = np.maximum(np.abs(Xk).max(axis=0), 1e-6).tolist()
    add_file(model.path, SCALES, _json({"documents": len(texts), "scales": scales}))
    return scales


def int8_scales(model, k):
    """The stored int8 scales (k,) float32 of the vectors cut to k dimensions."""
    try:
        with open(os.path.join(model.path or "", SCALES), encoding="utf-8") as f:
            scales = json.load(f)["scales"]
    except FileNotFoundError:
        raise MinembedError(f"{model.path} has no int8 scales: run  minembed quantize "
                            f"{model.path} [CORPUS]  first") from None
    if str(k) not in scales:
        raise MinembedError(f"{model.path} has no int8 scales for dimension {k}: run  minembed "
                            f"quantize {model.path} --dim {k}")
    return np.asarray(scales[str(k)], dtype=np.float32)


def _chunks(texts, docs=4096, chars=8_000_000):
    chunk, n = [], 0
    for t in texts:
        chunk.append(t)
        n += len(t)
        if len(chunk) == docs or n >= chars:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


def embed_file(model, corpus, out, dim=None, dtype="float32", normalize=None, batch_size=256,
               quiet=False, threads=None):
    """Embed the documents of ``corpus`` (a data.Corpus, read as a stream) into the .npy
    file ``out``, a chunk at a time: memory is bounded whatever the input's size. The
    file appears under its name only when complete: one row per document, an empty line of a
    "lines" file (a record with an empty text) included: encode("")'s vector. Returns (its
    shape, how many documents were empty, how many others got zeros: no token the model knows,
    e.g. words a model of words never saw twice in training). ``threads``: BLAS threads (None:
    MINEMBED_THREADS, else chosen: product/runtime.py)."""
    if dtype not in DTYPES:
        raise MinembedError(f"unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
    k = model.check_dim(dim)
    if dtype == "int8" and normalize is False:
        raise MinembedError("int8 output quantises unit vectors: drop --no-normalize")
    scales = int8_scales(model, k) if dtype == "int8" else None
    out = os.path.abspath(out)
    bar, chars, size = (Progress(label="embedding", unit="document", quiet=quiet), 0,
                        corpus.text_bytes)
    texts, empty, unknown = (text for _, text, _ in corpus.numbered(keep_empty=True)), 0, 0
    with atomic_path(out) as tmp:
        w = NpyWriter(tmp, *((np.uint8, (-(-k // 8),)) if dtype == "binary" else (dtype, (k,))))
        try:
            # check_dim said it
            with warnings.catch_warnings(), tuned(model.config["model"], threads):
                warnings.simplefilter("ignore")
                for chunk in _chunks(texts):
                    X = model.encode(chunk, batch_size, normalize, dim=k)
                    w.append(quantize(X, dtype, scales))
                    chars += sum(map(len, chunk))
                    empty += chunk.count("")
                    unknown += sum(1 for t, x in zip(chunk, X) if t and not x.any())
                    bar.update(len(chunk), size and f"~{min(99, 100 * chars // size)}% of the file")
            if not w.count:
                raise MinembedError(f"{corpus.name}: no documents found (the file is empty or "
                                    "blank)")
        except BaseException:
            w.f.close()
            raise
        w.close()
    bar.close()
    return (w.count,) + w.row, empty, unknown
