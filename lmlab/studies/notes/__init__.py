"""The notes workflow (seed 002): a small chat model from personal notes.

Roam export + primer + public corpora -> SentencePiece tokenizer -> token caches -> pretrain ->
SFT from the best pretrain checkpoint -> chat. Commands: `lmlab notes tokenizer|train|chat|paths`
and `lmlab cache build-all`; profiles in `profiles/`; a small sample export and primer in `data/`.
"""

from lmlab.config import register_profile_dir
from lmlab.studies.notes.paths import PROFILE_DIR

# NotesConfig profiles, for `lmlab notes train` only (not `lmlab train`): a group of their own
register_profile_dir(PROFILE_DIR, group="notes")
