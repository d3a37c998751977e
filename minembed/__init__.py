"""minembed: self-supervised text embeddings from text-crop positive pairs and
an InfoNCE loss, with every backward pass written by hand in NumPy/CuPy."""
__version__ = "0.1.0"
