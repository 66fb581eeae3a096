"""Key-value retrieval study (seed 000): how do the training distribution of context length and key
position shape retrieval?

generate (spec, words, samples, generate) -> lmlab train (the core) -> eval (evaluate) -> pipeline
(a sweep per phase, then a comparison report) -> demo. Entry points live in `cli.py`.
"""

from lmlab.config import register_profile_dir
from lmlab.studies.retrieval.spec import PROFILE_DIR

# the study's training recipes are `lmlab train` profiles: `lmlab train --profile kv-demo`
register_profile_dir(PROFILE_DIR)
