"""minembed: self-supervised text embeddings from text-crop positive pairs and
an InfoNCE loss, with every backward pass written by hand in NumPy/CuPy.

    model = minembed.train("corpus.txt", "model_dir")  # or: minembed train corpus.txt -o model_dir
    model = minembed.load("model_dir")
    X = model.encode(["a text", "another text"])       # (2, dim) float32, unit rows

Three floors (docs/DESIGN.md): ``core/`` is the textbook, one training step in plain NumPy
(layers, the two encoders, loss, optimiser, pairs, the step and the loop); ``fast/`` holds the
fast twins of some of its functions (cache-blocked NumPy, CUDA kernels), plugged in by one
mechanism (core/backend.py: ``@twin``); ``product/`` is everything a user's corpus and model
directory need (files, corpora, runs, checkpoints, evaluation, maps, exports, many processes,
the command line).
"""
from . import fast  # noqa: F401  (registers the fast twins)
from .errors import MinembedError
from .product.corpus import Corpus, builtin
from .product.model import Model
from .product.modeldir import load
from .product.run import train
from .product.settings import TrainConfig

__version__ = "0.1.0"
__all__ = ["load", "train", "Model", "MinembedError", "Corpus", "builtin", "TrainConfig"]
