"""python -m minembed: the command line (minembed --help)."""
from .product.cli import main

main()
