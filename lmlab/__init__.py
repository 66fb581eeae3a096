"""lmlab: a laboratory for controlled experiments on small language models."""

__version__ = "0.1.0"
