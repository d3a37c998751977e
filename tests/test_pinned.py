"""Behaviour pinned across refactors: a short training run of each encoder, from
a fixed seed on a generated corpus, gives the loss curve and final weights
recorded here (measured before the package was reorganised into core and
product floors; with the subword tokenizer, no documents kept out and spans
from 10 %, the defaults then). Within float32 tolerance rather than bit for bit, so that a
different BLAS or CPU does not fail it; on one machine two runs are bit-equal
(test_train.py)."""
import json
import os

import numpy as np
import pytest

from minembed.product.run import train
from minembed.product.settings import TrainConfig

PINNED = {
    "bag": (dict(dim=32, members=1, epochs=2, batch_size=32, vocab_size=500, seed=1, scale=20.0,
                 positives="crops", span_min=0.1, span_max=0.5, tokens="subwords",
                 held_out=False),
            [2.261012, 1.983695, 1.96278, 1.942967, 1.995889, 1.92103, 1.839115, 1.600841,
             1.91072, 1.691551, 1.865875, 1.625325, 1.693357, 1.902932],
            17.045110035399833),
    "transformer": (dict(model="transformer", dim=32, layers=2, heads=2, ffn=64, max_len=48,
                         epochs=2, batch_size=16, vocab_size=500, seed=1, scale=20.0,
                         bag_init=False, positives="crops", span_min=0.1, span_max=0.5,
                         held_out=False),
                    [2.990255, 2.362082, 2.605609, 2.563769, 2.265064, 2.332253, 2.409946,
                     2.156568, 2.029791, 1.813763, 1.943802, 1.980106, 1.979452, 1.957395,
                     1.988614, 2.089941, 1.696506, 1.47395, 1.882138, 1.552302, 1.963074,
                     1.675244, 1.610467, 1.422278, 1.424231, 1.622917, 1.494762, 1.735941,
                     1.713362, 1.628863],
                    12.97633824139144),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_short_run_matches_the_pinned_one(name, tmp_path, topic_txt):
    settings, losses, norm = PINNED[name]
    model = train(topic_txt, tmp_path / name, TrainConfig(**settings), quiet=True)
    with open(os.path.join(model.path, "log.jsonl")) as f:
        got = [json.loads(line)["loss"] for line in f]
    np.testing.assert_allclose(got, losses, rtol=1e-4, atol=1e-5)
    total = np.sqrt(sum(float((np.asarray(v, np.float64) ** 2).sum())
                        for v in model.params.values()))
    assert abs(total - norm) < 1e-5 * norm
