"""Density-aware preferences (seed 001): pairs, prefixes, embeddings and density, reward models
and DPO policies.

Importing the package registers the "reward", "dpo" and "grpo" training recipes
(`lmlab train --set recipe=reward|dpo|grpo`).
"""

from lmlab.studies.preference import dpo as _dpo  # noqa: F401  (registers "dpo")
from lmlab.studies.preference import grpo as _grpo  # noqa: F401  (registers "grpo")
from lmlab.studies.preference import recipe as _recipe  # noqa: F401  (registers "reward")
