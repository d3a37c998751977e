"""minembed: self-supervised text embeddings from text-crop positive pairs and
an InfoNCE loss, with every backward pass written by hand in NumPy/CuPy.

    model = minembed.load("minembed_model")
    X = model.encode(["a text", "another text"])       # (2, dim) float32
"""
from .errors import MinembedError
from .model import Model, load

__version__ = "0.1.0"
__all__ = ["load", "Model", "MinembedError"]
