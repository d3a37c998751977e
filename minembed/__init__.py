"""minembed: self-supervised text embeddings from text-crop positive pairs and
an InfoNCE loss, with every backward pass written by hand in NumPy/CuPy.

    model = minembed.load("minembed_model")
    X = model.encode(["a text", "another text"])       # (2, dim) float32

The floors: the core (backend, gradcheck, layers, bag, transformer, loss,
optim, crops, train) is one training step, readable in one sitting; the product
(data, tokenize, model, checkpoint, run, progress, evaluate, search, viz, cli)
is everything a user's corpus and model directory need; compare is an
experiment beside them.
"""
from .product.corpus import Corpus, builtin
from .errors import MinembedError
from .product.model import Model, load
from .core.train import TrainConfig

__version__ = "0.1.0"
__all__ = ["load", "Model", "MinembedError", "Corpus", "builtin", "TrainConfig"]
