"""Embedding distillation study (seed 004, "Track-B"): a small student that keeps a teacher's
nearest neighbours (listwise KL over teacher top-K + queue negatives, false-negative filter).

teacher (texts -> MiniLM, or a .npy; cached) -> knn (exact top-K, cached) -> recipe "distill" on
the one trainer (student, loss, batches, evaluator) -> report (seed's logs, checkpoints,
baselines) -> demo. Importing the package registers the recipe and the student class.
"""

from lmlab.studies.distill.recipe import register

register()
