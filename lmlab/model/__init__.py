"""GPT, KV cache with compression policies, and the generation engine.

Names load on first use, so `lmlab --help` and config validation do not import torch.
"""

import importlib

_WHERE = {
    "ModelConfig": "lmlab.model.config",
    "Engine": "lmlab.model.engine",
    "Generation": "lmlab.model.engine",
    "GenerationConfig": "lmlab.model.engine",
    "Request": "lmlab.model.engine",
    "Result": "lmlab.model.engine",
    "Event": "lmlab.model.engine",
    "GPT": "lmlab.model.gpt",
    "KV_POLICIES": "lmlab.model.kv",
    "KVCache": "lmlab.model.kv",
    "KVPolicy": "lmlab.model.kv",
    "kept_length": "lmlab.model.kv",
    "make_policy": "lmlab.model.kv",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'lmlab.model' has no attribute {name!r}")
