"""Every layer's backward against central finite differences (float64), plus
the behaviours the model relies on: masked softmax, dropout replay, padding."""
import math

import numpy as np
import pytest

from minembed.core import bag
from minembed.core import layers as L
from minembed.core.layers import densify
from minembed.core.gradcheck import check_grads

pytestmark = pytest.mark.usefixtures("both_implementations")

TOL = 1e-6


def _rng(seed=0):
    return np.random.default_rng(seed)


def _assert_grads(f, params, grads, tol=TOL):
    errors = check_grads(f, params, grads)
    bad = {k: e for k, e in errors.items() if not e < tol}
    assert not bad, bad


def _ragged(lengths, C, rng):
    """Packed rows (M, C), their grid cells and the key mask of a ragged batch."""
    lengths = np.asarray(lengths)
    T = max(1, lengths.max())
    key_mask = np.arange(T)[None, :] < lengths[:, None]
    index = np.flatnonzero(key_mask.ravel())
    return rng.standard_normal((len(index), C)), index, key_mask


def test_linear_grad():
    rng = _rng()
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    R = rng.standard_normal((2, 3, 5))
    f = lambda: float((L.linear_forward(x, w, b)[0] * R).sum())  # noqa: E731
    y, cache = L.linear_forward(x, w, b)
    np.testing.assert_allclose(y, x @ w + b)
    dx, dw, db = L.linear_backward(R, cache)
    _assert_grads(f, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})


def test_layernorm_forward_and_grad():
    rng = _rng(1)
    x = rng.standard_normal((3, 4, 6)) * 3 + 1
    g, b = rng.standard_normal(6), rng.standard_normal(6)
    y, cache = L.layernorm_forward(x, g, b)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * g + b
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    R = rng.standard_normal(y.shape)
    f = lambda: float((L.layernorm_forward(x, g, b)[0] * R).sum())  # noqa: E731
    dx, dg, db = L.layernorm_backward(R, cache)
    _assert_grads(f, {"x": x, "g": g, "b": b}, {"x": dx, "g": dg, "b": db})


def test_gelu_is_the_tanh_approximation():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0])
    y, _ = L.gelu_forward(x)
    ref = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(y, ref, rtol=1e-14)
    assert abs(y[4] - 0.8411919906082768) < 1e-12          # GPT-2's gelu(1)
    assert abs(y[4] - 0.8413447460685429) > 1e-4           # not the erf form


def test_gelu_grad():
    rng = _rng(2)
    x = rng.standard_normal((4, 7)) * 2
    R = rng.standard_normal(x.shape)
    f = lambda: float((L.gelu_forward(x)[0] * R).sum())  # noqa: E731
    dx = L.gelu_backward(R, L.gelu_forward(x)[1])
    _assert_grads(f, {"x": x}, {"x": dx})


def test_masked_softmax_values_and_fully_masked_rows():
    rng = _rng(3)
    z = rng.standard_normal((3, 2, 4, 5))
    mask = np.array([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool)[:, None, None, :]
    p, cache = L.softmax_forward(z, mask)
    assert not np.isnan(p).any()
    assert np.all(p[np.broadcast_to(~mask, p.shape)] == 0.0)     # exactly 0
    np.testing.assert_allclose(p[:2].sum(-1), 1.0)
    assert np.all(p[2] == 0.0)                                     # fully masked view
    np.testing.assert_allclose(p[1, ..., 0], 1.0)
    e = np.exp(z[0][..., [0, 1, 3]])
    np.testing.assert_allclose(p[0][..., [0, 1, 3]], e / e.sum(-1, keepdims=True))
    dz = L.softmax_backward(rng.standard_normal(p.shape), cache)
    assert not np.isnan(dz).any()
    assert np.all(dz[np.broadcast_to(~mask, dz.shape)] == 0.0)


def test_masked_softmax_grad():
    rng = _rng(4)
    z = rng.standard_normal((2, 3, 5))
    mask = np.array([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], bool)[:, None, :]
    R = rng.standard_normal(z.shape)
    f = lambda: float((L.softmax_forward(z, mask)[0] * R).sum())  # noqa: E731
    dz = L.softmax_backward(R, L.softmax_forward(z, mask)[1])
    _assert_grads(f, {"z": z}, {"z": dz})


def test_dropout_replays_scales_and_is_off_in_eval():
    x = _rng(5).standard_normal((200, 50))
    y1, c1 = L.dropout_forward(x, 0.25, np.random.default_rng(7))
    y2, _ = L.dropout_forward(x, 0.25, np.random.default_rng(7))
    y3, _ = L.dropout_forward(x, 0.25, np.random.default_rng(8))
    np.testing.assert_array_equal(y1, y2)                       # same state -> same mask
    assert not np.array_equal(y1, y3)
    kept = y1 != 0
    np.testing.assert_allclose(y1[kept], x[kept] / 0.75)        # inverted scaling
    assert abs((~kept).mean() - 0.25) < 0.02
    # the same generator state gives the same mask in float32 and float64
    y32, _ = L.dropout_forward(x.astype(np.float32), 0.25, np.random.default_rng(7))
    assert y32.dtype == np.float32
    np.testing.assert_array_equal(y32 != 0, kept)
    dy = _rng(6).standard_normal(x.shape)
    np.testing.assert_allclose(L.dropout_backward(dy, c1), dy * kept / 0.75)
    y, c = L.dropout_forward(x, 0.25, None)                     # eval: identity
    assert y is x and c is None and L.dropout_backward(dy, c) is dy
    assert L.dropout_forward(x, 0.0, np.random.default_rng(7))[0] is x


def test_dropout_grad():
    rng = _rng(9)
    x, R = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    f = lambda: float((L.dropout_forward(x, 0.3, np.random.default_rng(1))[0] * R).sum())  # noqa: E731
    dx = L.dropout_backward(R, L.dropout_forward(x, 0.3, np.random.default_rng(1))[1])
    _assert_grads(f, {"x": x}, {"x": dx})


def test_pad_unpad_roundtrip_and_grads():
    rng = _rng(10)
    x, index, key_mask = _ragged([3, 1, 0, 4], 2, rng)
    N, T = key_mask.shape
    grid, c = L.pad_forward(x, index, N, T)
    assert grid.shape == (N, T, 2)
    assert np.all(grid[~key_mask] == 0)
    back, cu = L.unpad_forward(grid, index)
    np.testing.assert_array_equal(back, x)
    Rg = rng.standard_normal(grid.shape)
    dx = L.pad_backward(Rg, c)
    _assert_grads(lambda: float((L.pad_forward(x, index, N, T)[0] * Rg).sum()), {"x": x}, {"x": dx})
    Rx = rng.standard_normal(x.shape)
    dgrid = L.unpad_backward(Rx, cu)
    assert np.all(dgrid[~key_mask] == 0)
    _assert_grads(lambda: float((L.unpad_forward(grid, index)[0] * Rx).sum()),
                  {"grid": grid}, {"grid": dgrid})


def _attn_args(rng, D=6, lengths=(3, 1, 0, 4)):
    x, index, key_mask = _ragged(list(lengths), D, rng)
    w = dict(w_qkv=rng.standard_normal((D, 3 * D)) * 0.5, b_qkv=rng.standard_normal(3 * D) * 0.1,
             w_out=rng.standard_normal((D, D)) * 0.5, b_out=rng.standard_normal(D) * 0.1)
    return x, index, key_mask, w


def _two_grids(lengths):
    """The same views as one grid, or as two grids (buckets) of their own length."""
    a, b = lengths[:2], lengths[2:]
    ga, gb = _ragged(a, 1, _rng())[1:], _ragged(b, 1, _rng())[1:]
    return [ga, gb]


@pytest.mark.parametrize("p_drop", [0.0, 0.3])
@pytest.mark.parametrize("buckets", [1, 2])
def test_attention_grad(p_drop, buckets):
    rng = _rng(11)
    x, index, key_mask, w = _attn_args(rng)
    grids = [(index, key_mask)] if buckets == 1 else _two_grids([3, 1, 0, 4])
    R = rng.standard_normal(x.shape)

    def run():
        r = np.random.default_rng(3) if p_drop else None
        return L.attention_forward(x, grids, w["w_qkv"], w["b_qkv"], w["w_out"],
                                   w["b_out"], 2, p_drop, r)

    f = lambda: float((run()[0] * R).sum())  # noqa: E731
    dx, dwq, dbq, dwo, dbo = L.attention_backward(R, run()[1])
    _assert_grads(f, {"x": x, **w},
                  {"x": dx, "w_qkv": dwq, "b_qkv": dbq, "w_out": dwo, "b_out": dbo})


@pytest.mark.parametrize("buckets", [1, 2])
def test_attention_matches_per_view_reference(buckets):
    """Each view attends to its own tokens only: compare with a plain loop."""
    rng = _rng(12)
    D, H = 6, 2
    lengths = [3, 1, 0, 4]
    x, index, key_mask, w = _attn_args(rng, D, lengths)
    grids = [(index, key_mask)] if buckets == 1 else _two_grids(lengths)
    y, _ = L.attention_forward(x, grids, w["w_qkv"], w["b_qkv"], w["w_out"], w["b_out"], H)
    start = 0
    for n in lengths:
        if n == 0:
            continue
        xv = x[start:start + n]
        qkv = xv @ w["w_qkv"] + w["b_qkv"]
        heads = []
        for h in range(H):
            q, k, v = (qkv[:, j * D + h * 3: j * D + h * 3 + 3] for j in range(3))
            s = q @ k.T / math.sqrt(3)
            a = np.exp(s - s.max(1, keepdims=True))
            heads.append(a / a.sum(1, keepdims=True) @ v)
        ref = np.concatenate(heads, 1) @ w["w_out"] + w["b_out"]
        np.testing.assert_allclose(y[start:start + n], ref, rtol=1e-12, atol=1e-12)
        start += n


# The transformer's lookups and pooling are the bag layer (one scatter in the codebase).

def test_bag_layer_as_a_lookup():
    """Views of one token each: the bag forward is table[ids], its backward the
    scatter-add of dy into the used rows (as np.add.at)."""
    rng = _rng(13)
    table = rng.standard_normal((10, 3))
    ids = np.array([4, 1, 4, 7, 1, 4], np.int32)
    y, cache = bag.embedding_bag_forward(table, ids, np.arange(len(ids) + 1))
    np.testing.assert_allclose(y, table[ids], rtol=1e-15)
    R = rng.standard_normal(y.shape)
    g = bag.embedding_bag_backward(R, cache)
    np.testing.assert_array_equal(g.rows, [1, 4, 7])
    dense = np.zeros_like(table)
    np.add.at(dense, ids, R)
    np.testing.assert_allclose(g.values, dense[[1, 4, 7]])
    f = lambda: float((bag.embedding_bag_forward(table, ids, np.arange(7))[0] * R).sum())  # noqa: E731
    _assert_grads(f, {"table": table}, {"table": densify(g, table.shape)})


def test_bag_layer_as_mean_pooling():
    """The rows of x taken as a table, each view its run of rows: the view means,
    an empty view a zero vector, and every row's gradient dy[view] / len."""
    rng = _rng(15)
    x = rng.standard_normal((4, 5))
    starts = np.array([0, 3, 3, 4])                      # views of 3, 0 and 1 rows
    y, cache = bag.embedding_bag_forward(x, np.arange(4), starts)
    np.testing.assert_allclose(y[0], x[:3].mean(0))
    assert np.all(y[1] == 0) and not np.isnan(y).any()
    np.testing.assert_allclose(y[2], x[3])
    R = rng.standard_normal(y.shape)
    g = bag.embedding_bag_backward(R, cache)
    np.testing.assert_array_equal(g.rows, np.arange(4))
    np.testing.assert_allclose(g.values, np.r_[np.repeat(R[:1] / 3, 3, 0), R[2:]])
    f = lambda: float((bag.embedding_bag_forward(x, np.arange(4), starts)[0] * R).sum())  # noqa: E731
    _assert_grads(f, {"x": x}, {"x": g.values})
