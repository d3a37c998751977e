"""The built-in docstring corpus: cleaning rules, counts, labels, cache."""
import gzip
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from minembed import datasets
from minembed.datasets import clean_docstring


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
    doc = "add(x1, x2, /, out=None)\n\nAdd arguments element-wise.\n\nIt is computed as::\n\n    x1 + x2\n\nDone."
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
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("minembed-cache"))


@pytest.fixture(scope="module")
def corpus(cache_dir):
    return datasets.docstrings(cache_dir=cache_dir, return_names=True)


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


def test_cache_written_and_reloaded(corpus, cache_dir):
    path = datasets.cache_path(cache_dir)
    assert os.path.basename(path).startswith(f"docstrings-v{datasets.FORMAT_VERSION}-numpy")
    assert path.endswith(".jsonl.gz") and os.path.exists(path)
    assert not [f for f in os.listdir(cache_dir) if f.endswith(".tmp")]
    with gzip.open(path, "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert first == {"label": corpus[1][0], "name": corpus[2][0], "text": corpus[0][0]}
    assert datasets.docstrings(cache_dir=cache_dir, return_names=True) == corpus
    texts, labels = datasets.docstrings(cache_dir=cache_dir)
    assert (texts, labels) == corpus[:2]


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MINEMBED_CACHE", str(tmp_path))
    assert os.path.dirname(datasets.cache_path()) == str(tmp_path)


def test_rebuild_in_fresh_process_is_identical(corpus, cache_dir, tmp_path):
    # Another process, another hash seed (set order), same bytes; nothing on stdout.
    env = dict(os.environ, PYTHONHASHSEED="12345")
    code = f"from minembed import datasets; datasets.docstrings(cache_dir={str(tmp_path)!r})"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    name = os.path.basename(datasets.cache_path(cache_dir))
    with open(os.path.join(cache_dir, name), "rb") as a, open(tmp_path / name, "rb") as b:
        assert a.read() == b.read()


def test_stats(corpus):
    texts, labels, _ = corpus
    s = datasets.stats(texts, labels)
    assert s["documents"] == len(texts)
    assert s["labels"] == len(set(labels))
    assert sum(s["docs_per_label"].values()) == len(texts)
    assert list(s["docs_per_label"].values()) == sorted(s["docs_per_label"].values(), reverse=True)
    assert s["mean_chars"] == pytest.approx(sum(map(len, texts)) / len(texts))
    assert datasets.MIN_CHARS <= s["median_chars"] <= s["mean_chars"] * 2


def test_stats_small():
    s = datasets.stats(["a" * 100, "b" * 300, "c" * 200], ["x", "y", "x"])
    assert s == {"documents": 3, "labels": 2, "docs_per_label": {"x": 2, "y": 1},
                 "mean_chars": 200.0, "median_chars": 200.0}
