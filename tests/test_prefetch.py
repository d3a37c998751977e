"""Batches drawn ahead on a thread (minembed/fast/prefetch.py): the same items in the same order,
errors raised in the caller, no thread left behind, and the same model bit for bit."""
import threading

import numpy as np
import pytest

from minembed.fast.prefetch import ahead
from minembed.product.run import train
from minembed.product.runtime import prefetch_batches
from minembed.product.settings import TrainConfig


def _threads():
    return [t for t in threading.enumerate() if t.name == "minembed-batches"]


def test_the_same_items_in_order():
    assert list(ahead(iter(range(100)), depth=3)) == list(range(100))
    assert list(ahead(iter([]))) == []
    assert not _threads()


def test_an_error_in_the_thread_is_raised_in_the_caller_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("bad batch")
    got = []
    with pytest.raises(ValueError, match="bad batch"):
        for x in ahead(items()):
            got.append(x)
    assert got == [1, 2]
    assert not _threads()


def test_a_caller_that_stops_early_stops_the_thread_within_depth_items():
    drawn = []

    def items():
        for i in range(10_000):
            drawn.append(i)
            yield i
    feed = ahead(items(), depth=2)
    assert [next(feed) for _ in range(5)] == [0, 1, 2, 3, 4]
    feed.close()
    assert not _threads()
    assert len(drawn) <= 5 + 2 + 1  # the caller's, the queue's, the one in hand


def test_prefetch_is_for_the_gpu_unless_asked(monkeypatch):
    monkeypatch.delenv("MINEMBED_PREFETCH", raising=False)
    assert prefetch_batches("gpu") and not prefetch_batches("cpu")
    monkeypatch.setenv("MINEMBED_PREFETCH", "1")
    assert prefetch_batches("cpu")
    monkeypatch.setenv("MINEMBED_PREFETCH", "0")
    assert not prefetch_batches("gpu")


@pytest.mark.parametrize("settings", [
    dict(dim=32, members=2, epochs=2, batch_size=16, vocab_size=500),
    dict(model="transformer", dim=16, layers=1, heads=2, ffn=32, max_len=32, epochs=1,
         batch_size=16, vocab_size=500, bag_init=False, dropout=0.1)],
    ids=["bag", "transformer-dropout"])
def test_training_with_batches_drawn_ahead_gives_the_same_model(settings, tmp_path, topic_txt,
                                                                monkeypatch):
    models = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("MINEMBED_PREFETCH", flag)
        models[flag] = train(topic_txt, tmp_path / flag, TrainConfig(seed=3, **settings),
                             quiet=True)
    for name, value in models["0"].params.items():
        assert np.array_equal(value, models["1"].params[name]), name
    assert not _threads()


def test_a_run_stopped_midway_leaves_no_thread(tmp_path, topic_txt, monkeypatch):
    import minembed.core.train as core_train
    calls, real = [], core_train.train_step

    def step_then_stop(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as ctrl-C in the middle of a step
        return real(*args)
    monkeypatch.setattr(core_train, "train_step", step_then_stop)
    monkeypatch.setenv("MINEMBED_PREFETCH", "1")
    try:
        train(topic_txt, tmp_path / "m", TrainConfig(dim=32, members=1, vocab_size=500),
              quiet=True)
    except KeyboardInterrupt:  # checked while the traceback still holds the loop's frame
        assert len(calls) == 3 and not _threads()
    else:
        pytest.fail("the run was not stopped")
