"""The command line: thin verbs over the Python API (``minembed --help``).

Every error a user can cause is a MinembedError, printed as one line (``Error: ...``) with exit
status 1; never a traceback. group.py holds the group and the shared options; the commands:
train.py (train), use.py (embed, quantize, export, search), serve.py (serve), study.py
(eval, compare, map, plot-log).
"""
from . import serve, study, train, use  # noqa: F401  (each registers its commands on main)
from .group import main

__all__ = ["main"]
