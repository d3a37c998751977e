"""Adam against its formula, lazy versus dense rows, the schedule, clipping."""
import numpy as np
import pytest

from minembed.core import optim
from minembed.core.layers import RowGrad, densify

pytestmark = pytest.mark.usefixtures("both_implementations")


def reference_adam(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    """Adam / AdamW written exactly as in the paper (Kingma & Ba, Loshchilov & Hutter)."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p - lr * wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_dense_adam_matches_formula(wd):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((5, 3))
    grads = [rng.standard_normal((5, 3)) for _ in range(4)]
    params = {"w": p0.copy()}
    state = optim.adam_init(params)
    for g in grads:
        optim.adam_step(params, {"w": g.copy()}, state, lr=0.01, weight_decay=wd)
    np.testing.assert_allclose(params["w"], reference_adam(p0, grads, 0.01, wd=wd),
                               rtol=1e-12, atol=1e-14)
    assert state["step"] == 4


def test_lazy_adam_updates_only_touched_rows_with_the_formula():
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((6, 2))
    params = {"e": p0.copy()}
    state = optim.adam_init(params)
    rows = np.array([1, 4])
    gs = [rng.standard_normal((2, 2)) for _ in range(3)]
    for g in gs:
        optim.adam_step(params, {"e": RowGrad(rows, g.copy())}, state, lr=0.1, lazy=True)
    untouched = [0, 2, 3, 5]
    np.testing.assert_array_equal(params["e"][untouched], p0[untouched])
    # the touched rows follow Adam on their own gradient sequence
    np.testing.assert_allclose(params["e"][rows], reference_adam(p0[rows], gs, 0.1), rtol=1e-12)


def test_dense_adam_with_row_gradient_moves_every_row_it_has_momentum_for():
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal((4, 2))
    params = {"e": p0.copy()}
    state = optim.adam_init(params)
    g1 = RowGrad(np.array([0, 1]), rng.standard_normal((2, 2)))
    g2 = RowGrad(np.array([2]), rng.standard_normal((1, 2)))
    dense = [densify(g1, (4, 2)), densify(g2, (4, 2))]
    optim.adam_step(params, {"e": g1}, state, lr=0.1, lazy=False)
    after1 = params["e"].copy()
    optim.adam_step(params, {"e": g2}, state, lr=0.1, lazy=False)
    np.testing.assert_allclose(params["e"], reference_adam(p0, dense, 0.1), rtol=1e-12)
    # row 0 had no gradient in step 2 but still moved (momentum): PyTorch's dense behaviour;
    # row 3 never had one and stays put
    assert not np.allclose(params["e"][0], after1[0])
    np.testing.assert_array_equal(params["e"][3], p0[3])


def test_schedule_warmup_then_linear_decay():
    lrs = [optim.lr_at(s, 10, 2, 1.0) for s in range(1, 11)]
    np.testing.assert_allclose(lrs, [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    assert optim.lr_at(1, 5, 0, 2.0) == 2.0 and optim.lr_at(5, 5, 0, 2.0) == pytest.approx(0.4)


def test_clip_grads_scales_to_max_norm():
    g = {"a": np.array([3.0, 0.0]), "b": RowGrad(np.array([0]), np.array([[4.0]]))}
    norm = optim.clip_grads(g, 1.0)
    assert norm == pytest.approx(5.0)
    assert optim.grad_norm(g) == pytest.approx(1.0)
    np.testing.assert_allclose(g["a"], [0.6, 0.0])
    assert optim.clip_grads(g, 10.0) == pytest.approx(1.0)  # below the bound: unchanged
    assert optim.grad_norm(g) == pytest.approx(1.0)
