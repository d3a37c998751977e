"""The whole transformer encoder: loss -> every parameter against finite
differences (float64, dropout on with replayed masks), padding, cutting,
determinism, init."""
import numpy as np
import pytest

from minembed.core import transformer as tr
from minembed.core.gradcheck import check_grads
from minembed.core.layers import RowGrad

pytestmark = pytest.mark.usefixtures("both_implementations")

CFG = dict(vocab_size=30, dim=8, layers=2, heads=2, ffn=16, max_len=6, dropout=0.1)
LENGTHS = [3, 0, 8, 5, 1]          # an empty view and one longer than max_len


def _batch(lengths=LENGTHS, seed=1):
    rng = np.random.default_rng(seed)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    return rng.integers(0, CFG["vocab_size"], offsets[-1]).astype(np.int32), offsets


def _params64(seed=0):
    rng = np.random.default_rng(seed)
    p = {k: v.astype(np.float64) for k, v in tr.init_params(CFG, rng).items()}
    for k in p:  # move away from the init (unit gains, zero biases) so every term matters
        p[k] += rng.standard_normal(p[k].shape) * 0.3
    return p


def _dense(g, shape):
    if isinstance(g, RowGrad):
        d = np.zeros(shape)
        d[g.rows] = g.values
        return d
    return g


def _loss_sum(emb, R):                     # L = sum(emb * R)
    return float((emb * R).sum()), R


def _loss_gram(emb, S):                    # L = sum(S * emb emb^T), dL/demb = (S + S^T) emb
    return float((S * (emb @ emb.T)).sum()), (S + S.T) @ emb


@pytest.mark.parametrize("loss", [_loss_sum, _loss_gram])
@pytest.mark.parametrize("train", [True, False])
def test_gradients_match_finite_differences(loss, train):
    p = _params64()
    ids, offsets = _batch()
    N = len(offsets) - 1
    W = np.random.default_rng(2).standard_normal((N, CFG["dim"]) if loss is _loss_sum else (N, N))

    def run():  # the same seed every time: every evaluation uses the same dropout masks
        return tr.forward(p, ids, offsets, CFG, train=train, rng=np.random.default_rng(5))

    f = lambda: loss(run()[0], W)[0]  # noqa: E731
    emb, cache = run()
    grads = tr.backward(loss(emb, W)[1], cache)
    assert set(grads) == set(p)
    dense = {k: _dense(g, p[k].shape) for k, g in grads.items()}
    errors = check_grads(f, p, dense)
    bad = {k: e for k, e in errors.items() if not e < 1e-6}
    assert not bad, bad


def test_dropout_changes_output_in_training_only():
    p = _params64()
    ids, offsets = _batch()
    e1 = tr.forward(p, ids, offsets, CFG, train=True, rng=np.random.default_rng(1))[0]
    e2 = tr.forward(p, ids, offsets, CFG, train=True, rng=np.random.default_rng(2))[0]
    e3 = tr.forward(p, ids, offsets, CFG, train=True, rng=np.random.default_rng(1))[0]
    assert not np.allclose(e1, e2)
    np.testing.assert_array_equal(e1, e3)
    with pytest.raises(ValueError):
        tr.forward(p, ids, offsets, CFG, train=True)
    a = tr.forward(p, ids, offsets, CFG)[0]
    b = tr.forward(p, ids, offsets, CFG, train=False, rng=np.random.default_rng(9))[0]
    np.testing.assert_array_equal(a, b)           # eval is deterministic, ignores rng


def test_views_are_independent_of_padding_and_batch():
    """A view's vector is the same alone or in any batch (padding never leaks)."""
    p = _params64()
    ids, offsets = _batch()
    emb = tr.forward(p, ids, offsets, CFG)[0]
    for i in range(len(offsets) - 1):
        v = ids[offsets[i]:offsets[i + 1]]
        alone = tr.forward(p, v, np.array([0, len(v)]), CFG)[0][0]
        np.testing.assert_allclose(emb[i], alone, rtol=1e-12, atol=1e-12)
    assert np.all(emb[1] == 0)                    # the empty view


def test_views_are_cut_to_max_len():
    p = _params64()
    ids, offsets = _batch()
    long = ids[offsets[2]:offsets[3]]              # 8 tokens, max_len 6
    a = tr.forward(p, long, np.array([0, 8]), CFG)[0]
    b = tr.forward(p, long[:6], np.array([0, 6]), CFG)[0]
    np.testing.assert_array_equal(a, b)
    changed = ids.copy()
    changed[offsets[2] + 6:offsets[3]] = (changed[offsets[2] + 6:offsets[3]] + 1) % 30
    np.testing.assert_array_equal(tr.forward(p, ids, offsets, CFG)[0],
                                  tr.forward(p, changed, offsets, CFG)[0])


def test_tok_emb_grad_only_on_real_kept_tokens():
    p = _params64()
    ids = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 21], np.int32)
    offsets = np.array([0, 2, 10, 10, 12])         # view 1 has 8 tokens: ids 9, 10 are cut
    emb, cache = tr.forward(p, ids, offsets, CFG, train=True, rng=np.random.default_rng(0))
    g = tr.backward(np.ones_like(emb), cache)["tok_emb"]
    assert isinstance(g, RowGrad)
    np.testing.assert_array_equal(g.rows, [1, 2, 3, 4, 5, 6, 7, 8, 20, 21])
    assert np.all(np.abs(g.values).sum(1) > 0)
    assert g.values.shape == (10, CFG["dim"])
    # the positional rows never reached get zero gradient too
    gp = tr.backward(np.ones_like(emb), cache)["pos_emb"]
    assert gp.shape == p["pos_emb"].shape


def test_zero_gradient_for_a_view_with_no_loss():
    """d emb_i = 0 for all but view 0: nothing flows into the others' tokens."""
    p = _params64()
    ids = np.array([1, 2, 3, 11, 12], np.int32)
    offsets = np.array([0, 3, 5])
    emb, cache = tr.forward(p, ids, offsets, CFG)
    demb = np.zeros_like(emb)
    demb[0] = 1.0
    g = tr.backward(demb, cache)["tok_emb"]
    np.testing.assert_array_equal(g.values[np.isin(g.rows, [11, 12])], 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_shape_and_dtype(dtype):
    p = {k: v.astype(dtype) for k, v in tr.init_params(CFG, np.random.default_rng(0)).items()}
    ids, offsets = _batch()
    emb, cache = tr.forward(p, ids, offsets, CFG, train=True, rng=np.random.default_rng(0))
    assert emb.shape == (len(offsets) - 1, CFG["dim"]) and emb.dtype == dtype
    grads = tr.backward(np.ones_like(emb), cache)
    for k, g in grads.items():
        v = g.values if isinstance(g, RowGrad) else g
        assert v.dtype == dtype, k
        if not isinstance(g, RowGrad):
            assert g.shape == p[k].shape, k


def test_init_statistics():
    cfg = dict(CFG, vocab_size=2000, dim=64, layers=4, ffn=128)
    p = tr.init_params(cfg, np.random.default_rng(0))
    assert all(v.dtype == np.float32 for v in p.values())
    assert p["tok_emb"].shape == (2000, 64) and p["pos_emb"].shape == (6, 64)
    assert abs(p["tok_emb"].std() - 0.02) < 0.001
    assert abs(p["blocks.0.attn.qkv.w"].std() - 0.02) < 0.001
    assert abs(p["blocks.1.mlp.fc.w"].std() - 0.02) < 0.001
    res = 0.02 / np.sqrt(2 * 4)
    assert abs(p["blocks.2.attn.out.w"].std() - res) < 0.001
    assert abs(p["blocks.3.mlp.proj.w"].std() - res) < 0.001
    assert np.all(p["blocks.0.ln1.g"] == 1) and np.all(p["ln_f.b"] == 0)
    assert np.all(p["blocks.0.attn.qkv.b"] == 0) and np.all(p["blocks.3.mlp.fc.b"] == 0)
    assert len(p) == 2 + 12 * 4 + 2


def test_length_buckets_do_not_change_the_result():
    p = _params64()
    rng = np.random.default_rng(4)
    lengths = rng.integers(0, 9, 11)
    ids, offsets = _batch(lengths, seed=4)
    ref, c1 = tr.forward(p, ids, offsets, dict(CFG, buckets=1))
    for buckets in (2, 3, 4, 20):
        emb, c = tr.forward(p, ids, offsets, dict(CFG, buckets=buckets))
        np.testing.assert_allclose(emb, ref, rtol=1e-12, atol=1e-12)
    R = rng.standard_normal(ref.shape)
    g1, g4 = (tr.backward(R, c1),
              tr.backward(R, tr.forward(p, ids, offsets, dict(CFG, buckets=4))[1]))
    for k in g1:
        a, b = (_dense(g1[k], p[k].shape), _dense(g4[k], p[k].shape))
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_encode_is_forward_without_cache():
    p = _params64()
    ids, offsets = _batch()
    emb, cache = tr.forward(p, ids, offsets, CFG)
    np.testing.assert_array_equal(tr.encode(p, ids, offsets, CFG), emb)
    assert cache is not None
