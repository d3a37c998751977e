"""The fast twins (minembed/fast) against their references (minembed/core): every CPU twin gives
its reference's numbers to float32 rounding on random inputs, edge cases included, and a whole
training step is the same with the twins on or off. (The CUDA twins: tests/test_cuda.py.)"""
import contextlib

import numpy as np
import pytest

from minembed import fast
from minembed.core import backend, bag, layers, optim, transformer
from minembed.core.layers import RowGrad
from minembed.fast import cpu, cuda

TOL = dict(rtol=2e-5, atol=2e-6)


def ragged(rng, n_views=9, vocab=40, max_len=7):
    lengths = rng.integers(0, max_len, n_views)
    lengths[0] = 0                                     # an empty view
    ids = rng.integers(0, vocab, int(lengths.sum())).astype(np.int32)
    ids[:3] = 5                                        # a repeated token
    return ids, np.r_[0, np.cumsum(lengths)].astype(np.int64)


def test_every_marked_function_has_a_cpu_twin_and_a_cuda_twin():
    assert set(cpu.TWINS) <= set(cuda.TWINS) | {layers.attention_core_forward,
                                                layers.attention_core_backward,
                                                bag.sublinear_bag_forward}
    for reference in cpu.TWINS:
        assert backend.TWINS[("numpy", reference.key)] is cpu.TWINS[reference]
        assert reference.reference is not reference  # the marked function dispatches


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("forward", ["embedding_bag_forward", "sublinear_bag_forward"])
def test_bag_twins(seed, forward):
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((40, 6)).astype(np.float32)
    ids, offsets = ragged(rng)
    ref, ref_cache = getattr(bag, forward).reference(table, ids, offsets)
    got, got_cache = getattr(cpu, forward)(table, ids, offsets)
    np.testing.assert_allclose(got, ref, **TOL)
    assert not got[0].any() and not ref[0].any()       # the empty view
    dout = rng.standard_normal(ref.shape).astype(np.float32)
    g_ref = bag.embedding_bag_backward.reference(dout, ref_cache)
    g_got = cpu.embedding_bag_backward(dout, got_cache)
    np.testing.assert_array_equal(g_got.rows, g_ref.rows)
    np.testing.assert_allclose(g_got.values, g_ref.values, **TOL)


def test_gelu_twin():
    x = np.random.default_rng(0).standard_normal((70_000, 3)).astype(np.float32) * 3  # > one block
    y, c = layers.gelu_forward.reference(x)
    y2, c2 = cpu.gelu_forward(x)
    np.testing.assert_allclose(y2, y, **TOL)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(cpu.gelu_backward(dy, c2),
                               layers.gelu_backward.reference(dy, c), **TOL)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("grad", ["dense", "rowgrad", "rows"])
def test_adam_twins(weight_decay, grad):
    rng = np.random.default_rng(2)
    p, m, v = (rng.standard_normal((30_000, 4)).astype(np.float32) for _ in range(3))
    v = np.abs(v)
    rows = np.sort(rng.choice(len(p), 500, replace=False))
    g_rows = rng.standard_normal((500, 4)).astype(np.float32)
    states = [[a.copy() for a in (p, m, v)] for _ in range(2)]
    for (pp, mm, vv), update in zip(states, ("reference", "twin")):
        fn = {"reference": {"dense": optim.adam_update.reference,
                            "rowgrad": optim.adam_update.reference,
                            "rows": optim.adam_update_rows.reference},
              "twin": {"dense": cpu.adam_update, "rowgrad": cpu.adam_update,
                       "rows": cpu.adam_update_rows}}[update][grad]
        for step in (1, 2, 3):
            if grad == "rows":
                fn(pp, rows, g_rows, mm, vv, step, 1e-2, weight_decay=weight_decay)
            else:
                g = (RowGrad(rows, g_rows) if grad == "rowgrad"
                     else layers.densify(RowGrad(rows, g_rows), p.shape))
                fn(pp, g, mm, vv, step, 1e-2, weight_decay=weight_decay)
    for a, b in zip(*states):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    if grad == "rows":  # lazy: the other rows did not move
        other = np.setdiff1d(np.arange(len(p)), rows)
        np.testing.assert_array_equal(states[1][0][other], p[other])


@pytest.mark.parametrize("p_drop", [0.0, 0.3])
def test_attention_core_twin_view_at_a_time(p_drop):
    rng = np.random.default_rng(3)
    lens = np.array([0, 2, 3, 5])                       # sorted lengths, one empty view
    T, H, D = 5, 2, 8
    index = np.concatenate([n * T + np.arange(n_len) for n, n_len in enumerate(lens)])
    key_mask = np.arange(T)[None, :] < lens[:, None]
    qkv = rng.standard_normal((int(lens.sum()), 3 * D)).astype(np.float32)
    ctx, cache = layers.attention_core_forward.reference(qkv, index, key_mask, H, p_drop,
                                                         np.random.default_rng(7))
    ctx2, cache2 = cpu.attention_core_forward(qkv, index, key_mask, H, p_drop,
                                              np.random.default_rng(7))
    np.testing.assert_allclose(ctx2, ctx, **TOL)        # the same dropout masks: one random stream
    dctx = rng.standard_normal(ctx.shape).astype(np.float32)
    np.testing.assert_allclose(cpu.attention_core_backward(dctx, cache2),
                               layers.attention_core_backward.reference(dctx, cache), **TOL)


@pytest.mark.parametrize("model", ["bag", "transformer"])
def test_a_training_step_is_the_same_with_the_twins_or_the_references(model):
    rng = np.random.default_rng(4)
    cfg = dict(vocab_size=60, dim=16, layers=2, heads=2, ffn=32, max_len=8, dropout=0.1)
    enc = bag if model == "bag" else transformer
    params = enc.init_params(cfg, np.random.default_rng(0))
    ids, offsets = ragged(rng, n_views=12, vocab=60, max_len=9)
    results = []
    for twins in (True, False):
        with contextlib.nullcontext() if twins else fast.reference_only():
            emb, cache = enc.forward(params, ids, offsets, cfg, train=True,
                                     rng=np.random.default_rng(5))
            grads = enc.backward(np.ones_like(emb) / emb.size, cache)
        results.append((emb, grads))
    (e1, g1), (e2, g2) = results
    np.testing.assert_allclose(e1, e2, **TOL)
    for k in g1:
        a, b = g1[k], g2[k]
        if isinstance(a, RowGrad):
            np.testing.assert_array_equal(a.rows, b.rows)
            a, b = a.values, b.values
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=k)


def test_reference_only_restores_the_twins():
    with fast.reference_only():
        assert not backend.use_twins
    assert backend.use_twins
