"""Key-value retrieval study (seed 000): how do the training distribution of context length and key
position shape retrieval?

generate (spec, words, samples, generate) -> lmlab train (the core) -> eval (evaluate) -> pipeline
(a sweep per phase, then a comparison report) -> demo. Entry points live in `cli.py`.
"""
