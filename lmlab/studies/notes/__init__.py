"""The notes workflow (seed 002): a small chat model from personal notes.

Roam export + primer + public corpora -> SentencePiece tokenizer -> token caches -> pretrain ->
SFT from the best pretrain checkpoint -> chat. Commands: `lmlab notes tokenizer|train|chat|paths`
and `lmlab cache build-all`; profiles in `profiles/`; a small sample export and primer in `data/`.
"""
