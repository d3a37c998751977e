"""BLAS threads chosen for the work (minembed/product/runtime.py): --threads, MINEMBED_THREADS, the
choice per model, the limits inside and after, and the same numbers for any count."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from minembed import MinembedError

from minembed.product import runtime


def blas_threads():
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_choice(monkeypatch):
    monkeypatch.delenv("MINEMBED_THREADS", raising=False)
    assert runtime.choose_threads("bag") == 1
    assert runtime.choose_threads("transformer", 3) == 3
    cores = len(runtime.os.sched_getaffinity(0))
    assert 1 <= runtime.choose_threads("transformer") <= cores
    assert runtime._busy_elsewhere() >= 0
    monkeypatch.setattr(runtime, "_busy_elsewhere", lambda: 0)
    assert runtime.choose_threads("transformer") == cores        # a quiet machine: every core
    monkeypatch.setattr(runtime, "_busy_elsewhere", lambda: cores)
    assert runtime.choose_threads("transformer") == 1            # all of them busy: one
    assert runtime.choose_threads("bag", None, 3) == 3           # a count to keep (a resumed run's)
    monkeypatch.setenv("MINEMBED_THREADS", "2")
    assert runtime.choose_threads("bag") == 2
    assert runtime.choose_threads("bag", None, 3) == 2           # the variable before a default
    for bad in ("0", "two"):
        monkeypatch.setenv("MINEMBED_THREADS", bad)
        with pytest.raises(MinembedError, match="MINEMBED_THREADS"):
            runtime.choose_threads("bag")


def test_limits_inside_and_restored_after(monkeypatch):
    monkeypatch.delenv("MINEMBED_THREADS", raising=False)
    before = blas_threads()
    with runtime.tuned("bag") as n:
        assert n == 1 and blas_threads() == {1}
        with runtime.tuned("transformer") as inner:   # nested: the outer count holds
            assert inner == 1 and blas_threads() == {1}
        with runtime.tuned("transformer", 2) as inner:
            assert inner == 2 and blas_threads() == {2}
    assert blas_threads() == before


def test_the_same_numbers_to_rounding_for_any_thread_count():
    """Threads split a product's rows and columns, never a sum, so two counts agree to float32
    rounding; not always bit for bit (the edges' kernels differ: on an AMD EPYC with OpenBLAS
    0.3.31, 2 % of the elements by up to 5e-5), which is why a resumed run keeps its count."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((2000, 256), dtype=np.float32),
            rng.standard_normal((256, 1024), dtype=np.float32))
    outs = []
    for n in (1, 2):
        with runtime.tuned("transformer", n):
            outs.append(a @ b)
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-4)
