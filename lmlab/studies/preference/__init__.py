"""Density-aware preferences (seed 001): pairs, prefixes, embeddings and density, reward models.

Importing the package registers the "reward" training recipe (`lmlab train --set recipe=reward`).
"""

from lmlab.studies.preference import recipe as _recipe  # noqa: F401  (registers "reward")
