"""Token shards (format, writer, memory-mapped reader, splits) and the batch loader.

The loader imports torch, so it loads on first use: `from lmlab.data import TokenLoader` works,
while `import lmlab.data` alone stays light.
"""

from lmlab.data.shards import Segment, ShardDir, ShardWriter, SplitView, split_view

__all__ = [
    "Segment",
    "ShardDir",
    "ShardWriter",
    "SplitView",
    "split_view",
    "TokenLoader",
    "count_tokens",
    "IGNORE_INDEX",
]


def __getattr__(name: str):
    if name in ("TokenLoader", "count_tokens", "IGNORE_INDEX"):
        from lmlab.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'lmlab.data' has no attribute {name!r}")
