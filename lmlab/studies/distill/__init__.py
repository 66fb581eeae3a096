"""Embedding distillation study (seed 004, "Track-B"): a small student that keeps a teacher's
nearest neighbours (listwise KL over teacher top-K + queue negatives, false-negative filter).

teacher (texts -> MiniLM, or a .npy; cached) -> knn (exact top-K, cached) -> recipe "distill" on
the one trainer (student, loss, batches, evaluator) -> report (seed's logs, checkpoints,
baselines) -> demo. Importing the package registers the recipe, the student class and the
track-b profile (`lmlab train --profile track-b`).
"""

from pathlib import Path

from lmlab import config as _config
from lmlab.studies.distill.recipe import register

PROFILE_DIR = Path(__file__).parent / "profiles"

register()
_config.register_profile_dir(PROFILE_DIR)
