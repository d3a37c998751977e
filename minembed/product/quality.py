"""Is the trained model any good? Checked before a run saves it.

``check_vitals``: a run whose weights or vectors are no longer finite and distinct (a learning
rate far too high makes weights of 1e30, whose squared norms overflow float32: every vector then
normalises to zero) is a failed run, not a model.
"""
import itertools

import numpy as np

from .hook import failed

VITALS_DOCS = 256  # documents encoded to check a model's vectors


def check_vitals(model, source, lr):
    """Raise a failed run's error unless every weight is finite and the vectors of the first
    VITALS_DOCS documents of ``source`` (a Corpus) are finite, of unit length, and not all one."""
    bad = [k for k, v in model.params.items() if not np.isfinite(np.asarray(v)).all()]
    texts = list(itertools.islice(source.texts(), VITALS_DOCS))
    X = model.encode(texts) if not bad else None
    why = f"its weights {', '.join(bad)} are not finite" if bad else \
        "its vectors are not finite" if not np.isfinite(X).all() else \
        "its vectors have no length" if (np.linalg.norm(X, axis=1) < 0.5).mean() > 0.5 else \
        "its vectors are all the same" if np.ptp(X, axis=0).max() < 1e-6 else None
    if why is not None:
        weights = [np.asarray(v) for v in model.params.values()]
        largest = max(float(np.abs(w[np.isfinite(w)]).max(initial=0.0)) for w in weights)
        raise failed(f"training failed: {why} (finite weights up to {largest:.1e}); the learning "
                     f"rate {lr:g} is probably far too high (try a lower --lr); no model was saved")
