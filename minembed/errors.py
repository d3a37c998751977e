"""The one exception type users see.

Anything the user can cause (a missing file, a bad number, a corrupted model)
raises ``MinembedError`` with a one-line message; the CLI prints it as
``error: ...`` and exits non-zero, never with a traceback.
"""


class MinembedError(Exception):
    """A user-facing error: one line that names the problem."""
