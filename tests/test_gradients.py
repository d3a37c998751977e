"""Hand-written backward passes of the bag encoder and the loss against central
finite differences, in float64."""
import numpy as np
import pytest

from minembed.core import bag, loss
from minembed.core.gradcheck import check_grads, numerical_grad, rel_error
from minembed.core.layers import densify

pytestmark = pytest.mark.usefixtures("both_implementations")

TOL = 1e-6


def ragged(rng, V, lengths):
    lengths = np.asarray(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return rng.integers(0, V, size=offsets[-1]).astype(np.int32), offsets


def test_checker_catches_a_wrong_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5)
    errs = check_grads(lambda: float((x ** 3).sum()), {"x": x}, {"x": 2 * x ** 2})  # should be 3x^2
    assert errs["x"] > 0.1
    errs = check_grads(lambda: float((x ** 3).sum()), {"x": x}, {"x": 3 * x ** 2})
    assert errs["x"] < TOL


def test_mean_pooling_matches_a_loop_and_handles_empty_views():
    rng = np.random.default_rng(1)
    table = rng.standard_normal((30, 4))
    ids, offsets = ragged(rng, 30, [3, 0, 1, 7, 2])
    out, _ = bag.embedding_bag_forward(table, ids, offsets)
    for i in range(5):
        seg = ids[offsets[i]:offsets[i + 1]]
        want = table[seg].mean(axis=0) if len(seg) else np.zeros(4)
        np.testing.assert_allclose(out[i], want, rtol=1e-12, atol=1e-12)


def test_sublinear_pooling_weighs_a_token_by_one_plus_log_its_count():
    rng = np.random.default_rng(1)
    table = rng.standard_normal((30, 4))
    # 7 x4 and 2; none; 9 x2 and 4
    ids, offsets = np.array([7, 7, 7, 2, 7, 9, 9, 4]), np.array([0, 5, 5, 8])
    out, _ = bag.sublinear_bag_forward(table, ids, offsets)
    w = 1 + np.log(4)
    np.testing.assert_allclose(out[0], (w * table[7] + table[2]) / (w + 1), rtol=1e-12)
    assert np.all(out[1] == 0)
    np.testing.assert_allclose(out[2], ((1 + np.log(2)) * table[9] + table[4])
                               / (2 + np.log(2)), rtol=1e-12)
    assert ids.tolist() == [7, 7, 7, 2, 7, 9, 9, 4]                    # the caller's ids untouched
    # no repeats: the plain mean
    np.testing.assert_allclose(bag.sublinear_bag_forward(table, np.array([3, 9, 4]),
                                                         np.array([0, 3]))[0],
                               table[[3, 9, 4]].mean(axis=0, keepdims=True), rtol=1e-12)


@pytest.mark.parametrize("lengths", [[3, 5, 1, 4], [6, 0, 2], [1]])
@pytest.mark.parametrize("forward", [bag.embedding_bag_forward, bag.sublinear_bag_forward])
def test_mean_pooling_backward_over_ragged_ids(lengths, forward):
    rng = np.random.default_rng(2)
    V, D = 12, 5  # a small vocabulary, so tokens repeat within and across views
    table = rng.standard_normal((V, D))
    ids, offsets = ragged(rng, V, lengths)
    R = rng.standard_normal((len(lengths), D))

    def f():
        return float((forward(table, ids, offsets)[0] * R).sum())

    out, cache = forward(table, ids, offsets)
    g = bag.embedding_bag_backward(R, cache)
    # only rows that occur are returned, sorted and distinct
    assert list(g.rows) == sorted(set(ids.tolist()))
    assert check_grads(f, {"table": table}, {"table": densify(g, table.shape)})["table"] < TOL


def test_l2_normalize_backward():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6))
    R = rng.standard_normal((4, 6))
    n, cache = loss.l2_normalize_forward(x)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0)
    dx = loss.l2_normalize_backward(R, cache)
    f = lambda: float((loss.l2_normalize_forward(x)[0] * R).sum())  # noqa: E731
    assert check_grads(f, {"x": x}, {"x": dx})["x"] < TOL


def test_cosine_similarity_gradient():
    """S = an @ pn.T with n = x/|x|: the cosine similarity matrix, checked on its own."""
    rng = np.random.default_rng(4)
    a, p = rng.standard_normal((3, 5)), rng.standard_normal((4, 5))
    R = rng.standard_normal((3, 4))

    def f():
        an, _ = loss.l2_normalize_forward(a)
        pn, _ = loss.l2_normalize_forward(p)
        return float(((an @ pn.T) * R).sum())

    an, ca = loss.l2_normalize_forward(a)
    pn, cp = loss.l2_normalize_forward(p)
    grads = {"a": loss.l2_normalize_backward(R @ pn, ca),
             "p": loss.l2_normalize_backward(R.T @ an, cp)}
    errs = check_grads(f, {"a": a, "p": p}, grads)
    assert max(errs.values()) < TOL


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_infonce_backward(symmetric, scale):
    rng = np.random.default_rng(5)
    a, p = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))
    f = lambda: loss.infonce_forward(a, p, scale=scale, symmetric=symmetric)[0]  # noqa: E731
    _, _, cache = loss.infonce_forward(a, p, scale=scale, symmetric=symmetric)
    da, dp = loss.infonce_backward(1.0, cache)
    errs = check_grads(f, {"a": a, "p": p}, {"a": da, "p": dp})
    assert max(errs.values()) < TOL, errs


@pytest.mark.parametrize("symmetric", [False, True])
def test_matryoshka_infonce_backward(symmetric):
    """The mean of InfoNCE over prefixes 2, 5 and 8 of the vectors: its hand-written
    backward against finite differences, and its value against the terms by hand."""
    rng = np.random.default_rng(8)
    a, p = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))
    dims = [2, 5, 8]
    f = lambda: loss.matryoshka_forward(a, p, dims, scale=7.0, symmetric=symmetric)[0]  # noqa: E731
    value, acc, cache = loss.matryoshka_forward(a, p, dims, scale=7.0, symmetric=symmetric)
    terms = [loss.infonce_forward(a[:, :k], p[:, :k], scale=7.0,
                                  symmetric=symmetric)[0] for k in dims]
    assert abs(value - np.mean(terms)) < 1e-12
    assert acc == loss.infonce_forward(a, p, 7.0, symmetric)[1]  # the full vectors
    da, dp = loss.matryoshka_backward(1.0, cache)
    errs = check_grads(f, {"a": a, "p": p}, {"a": da, "p": dp})
    assert max(errs.values()) < TOL, errs
    # a single prefix = the full dimension is plain InfoNCE, value and gradient
    v1, _, c1 = loss.matryoshka_forward(a, p, [8], scale=7.0)
    v0, _, c0 = loss.infonce_forward(a, p, scale=7.0)
    assert v1 == v0
    assert all(np.array_equal(x, y) for x, y in zip(loss.matryoshka_backward(1.0, c1),
                                                     loss.infonce_backward(1.0, c0)))


def test_infonce_values():
    """Perfectly matched, well separated pairs: loss ~0 and accuracy 1; the
    symmetric loss of a symmetric similarity equals the one-way loss."""
    a = np.eye(4)
    l1, acc, _ = loss.infonce_forward(a, a, scale=20.0)
    assert l1 < 1e-6 and acc == 1.0
    l2, _, _ = loss.infonce_forward(a, a, scale=20.0, symmetric=True)
    assert abs(l1 - l2) < 1e-12
    # uniform similarities: loss = log B
    lu, _, _ = loss.infonce_forward(np.ones((5, 3)), np.ones((5, 3)), scale=20.0)
    assert abs(lu - np.log(5)) < 1e-9
    # large scale does not overflow (log-sum-exp)
    lbig, _, _ = loss.infonce_forward(np.eye(3), np.eye(3)[::-1].copy(), scale=1e4)
    assert np.isfinite(lbig) and lbig > 1e3


@pytest.mark.parametrize("symmetric", [False, True])
def test_whole_bag_model_gradient(symmetric):
    """Loss -> InfoNCE -> L2 norm -> mean pooling -> embedding table, in one check."""
    rng = np.random.default_rng(6)
    V, D, B = 15, 6, 4
    params = {"tok_emb": rng.standard_normal((V, D))}
    ids, offsets = ragged(rng, V, rng.integers(1, 6, size=2 * B))

    def f():
        emb, _ = bag.forward(params, ids, offsets)
        return loss.infonce_forward(emb[:B], emb[B:], scale=5.0, symmetric=symmetric)[0]

    emb, cache = bag.forward(params, ids, offsets)
    _, _, lc = loss.infonce_forward(emb[:B], emb[B:], scale=5.0, symmetric=symmetric)
    da, dp = loss.infonce_backward(1.0, lc)
    g = bag.backward(np.concatenate([da, dp]), cache)["tok_emb"]
    errs = check_grads(f, params, {"tok_emb": densify(g, (V, D))})
    assert errs["tok_emb"] < TOL
    # untouched rows get exactly no gradient
    untouched = np.setdiff1d(np.arange(V), ids)
    assert np.all(numerical_grad(f, params["tok_emb"])[untouched] == 0.0)


def test_float32_stays_float32():
    rng = np.random.default_rng(7)
    params = bag.init_params({"vocab_size": 50, "dim": 8}, rng)
    ids, offsets = ragged(rng, 50, [3, 4, 5, 6])
    emb, cache = bag.forward(params, ids, offsets)
    assert emb.dtype == np.float32
    _, _, lc = loss.infonce_forward(emb[:2], emb[2:])
    da, dp = loss.infonce_backward(1.0, lc)
    assert da.dtype == np.float32 and dp.dtype == np.float32
    assert bag.backward(np.concatenate([da, dp]), cache)["tok_emb"].values.dtype == np.float32
    assert rel_error(params["tok_emb"].std(), 0.02) < 0.05
