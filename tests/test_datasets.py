"""The built-in docstring corpus: the shipped snapshot (counts, labels, clean
text) and its builder, tools/build_docstrings.py (cleaning rules, determinism)."""
import gzip
import importlib.util
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from minembed.product import corpus as data

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_docstrings",
                                               ROOT / "tools" / "build_docstrings.py")
datasets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(datasets)
clean_docstring = datasets.clean_docstring


# ---------------------------------------------------------------------------
# Cleaning one docstring (fast: no imports of the stack)
# ---------------------------------------------------------------------------

DOC = """
    Compute the thing of an array.

    This uses :func:`numpy.sum` and :class:`~scipy.sparse.csr_array`; see
    ``np.add`` and `the docs <https://example.org>`_ as in [1]_.

    .. versionadded:: 1.2
        The `axis` keyword.

    Parameters
    ----------
    a : array_like
        Input array with a long description that must not be kept.

    Returns
    -------
    out : ndarray
        The result.

    Notes
    -----
    The algorithm is described in the paper ([2]_). It is computed as

    .. math::

        y = \\sum_i x_i

    where the sum runs over all elements.

    .. note:: Admonitions are prose.

    The options are:

    - fast, which is fast
    - slow, which is slow

    References
    ----------
    .. [1] A. Author, "A paper", 2001.

    Examples
    --------
    >>> import numpy as np
    >>> np.thing([1, 2])
    3
    """


def test_clean_docstring_keeps_prose_drops_markup():
    text = clean_docstring(DOC)
    assert text == (
        "Compute the thing of an array. "
        "This uses numpy.sum and csr_array; see np.add and the docs as in. "
        "The algorithm is described in the paper. It is computed as "
        "where the sum runs over all elements. "
        "Admonitions are prose. "
        "The options are: fast, which is fast. slow, which is slow.")


def test_clean_docstring_drops_signature_line_and_literal_blocks():
    doc = ("add(x1, x2, /, out=None)\n\nAdd arguments element-wise.\n\nIt is computed as::\n\n"
           "    x1 + x2\n\nDone.")
    # The colon introduced the dropped block: the sentence ends there.
    assert clean_docstring(doc) == "Add arguments element-wise. It is computed as. Done."


def test_clean_docstring_drops_tables_and_array_api_block():
    doc = """Summary line.

    **Array API Standard Support**

    `f` has experimental support for Python Array API Standard compatible backends.

    ====  ====
    Lib   CPU
    ====  ====
    """
    assert clean_docstring(doc) == "Summary line."


def test_clean_docstring_star_in_formula_is_not_a_bullet():
    doc = ("The double factorial skips every second value, for example ``7!! = 7 * 5\n"
           "* 3 * 1``. It can be approximated with the gamma function.")
    assert clean_docstring(doc) == (
        "The double factorial skips every second value, for example 7!! = 7 * 5 * 3 * 1. "
        "It can be approximated with the gamma function.")


def test_clean_docstring_drops_formula_paragraphs():
    doc = "Summary of the function.\n\n    y = a * x ** 2 + b * x + c\n\nMore prose here."
    assert clean_docstring(doc) == "Summary of the function. More prose here."


def test_clean_docstring_empty():
    assert clean_docstring(None) == ""
    assert clean_docstring("Parameters\n----------\nx : int\n    A number.\n") == ""


# ---------------------------------------------------------------------------
# The corpus (built once per module: importing the stack takes seconds)
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus():
    return data.builtin(return_names=True)


def test_counts_in_range(corpus):
    texts, labels, names = corpus
    assert len(texts) == len(labels) == len(names)
    # The three packages have ~5k public objects and methods with a docstring;
    # about half have 100+ characters of description.
    assert 2000 <= len(texts) <= 20000
    assert 15 <= len(set(labels)) <= 45


def test_every_label_has_the_minimum(corpus):
    _, labels, _ = corpus
    counts = Counter(labels)
    assert min(counts.values()) >= datasets.MIN_DOCS_PER_LABEL
    for label in counts:
        assert label.split(".")[0] in ("numpy", "scipy", "sklearn"), label
        assert not any(part.startswith("_") for part in label.split(".")), label
    # Each package contributes several classes.
    tops = Counter(label.split(".")[0] for label in counts)
    assert min(tops.values()) >= 3, tops


def test_texts_are_clean_single_lines(corpus):
    texts, _, _ = corpus
    for text in texts:
        assert len(text) >= datasets.MIN_CHARS
        assert text == text.strip() and "  " not in text
        for bad in (">>>", "----------", ":func:", ":class:", ":ref:", "``", ".. math::",
                    "\n", "\t", "]_"):
            assert bad not in text, (bad, text[:200])


def test_no_duplicates(corpus):
    texts, _, names = corpus
    assert len(set(texts)) == len(texts)
    assert len(set(names)) == len(names)
    assert names == sorted(names)


def test_known_objects_land_where_expected(corpus):
    texts, labels, names = corpus
    by_name = dict(zip(names, zip(labels, texts)))
    label, text = by_name["sklearn.cluster._kmeans.KMeans"]
    assert label == "sklearn.cluster"
    assert text.startswith("K-Means clustering.")
    assert "Parameters" not in text and "n_clusters : int" not in text
    assert by_name["scipy.stats.norm"][0] == "scipy.stats"
    assert by_name["scipy.stats.norm"][1].startswith("A normal continuous random variable.")
    # A ufunc has no __module__: its label comes from where it is exposed.
    assert by_name["scipy.special.gamma"][0] == "scipy.special"
    assert by_name["numpy.einsum"][0] == "numpy"
    assert by_name["sklearn.linear_model._logistic.LogisticRegression"][0] == "sklearn.linear_model"
    # A Notes section's prose is kept (KMeans: the complexity discussion).
    assert "complexity" in by_name["sklearn.cluster._kmeans.KMeans"][1]
    # Template sentences shared by many documents are removed.
    assert not any("Read more in the User Guide." in t for t in texts)


def test_shipped_snapshot_is_small_and_documented():
    assert os.path.getsize(data.BUILTIN) <= 1_000_000
    readme = (Path(data.BUILTIN).parent / "README.md").read_text()
    for needle in ("numpy 2.4.6", "scipy 1.17.1", "scikit-learn 1.9.1", "BSD",
                   "tools/build_docstrings.py"):
        assert needle in readme


def test_builder_is_deterministic_and_writes_the_shipped_format(tmp_path):
    """Two builds in processes with different hash seeds give the same bytes, in the
    shipped file's format (the documents themselves depend on the installed versions)."""
    outs = []
    for seed in ("1", "12345"):
        out = tmp_path / f"c{seed}.jsonl.gz"
        res = subprocess.run([sys.executable, str(ROOT / "tools" / "build_docstrings.py"),
                              "--out", str(out)],
                             env=dict(os.environ, PYTHONHASHSEED=seed), capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    with gzip.open(tmp_path / "c1.jsonl.gz", "rt", encoding="utf-8") as f:
        first = f.readline()
    with gzip.open(data.BUILTIN, "rt", encoding="utf-8") as f:
        assert first.split('"', 3)[1] == f.readline().split('"', 3)[1] == "label"


def test_corpus_object_reads_the_builtin(corpus):
    c = data.Corpus()
    texts, labels = c.read()
    assert (texts, labels) == corpus[:2]
    assert c.key.startswith("builtin-") and c.identity["path"] is None
