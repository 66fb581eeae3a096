"""The one error type the CLI turns into a one-line message (no traceback unless LMLAB_DEBUG=1)."""


class LmlabError(Exception):
    """A user-facing error: the message names the file, key or line at fault."""
