"""KV-compression bench (seed 003): where does accuracy break as a KV policy's budget shrinks, per
context-length bin?

prepare (datasets, prepare) -> run (engines, openai_engine, run) -> score (metrics, score) ->
analyze (analyze, with lmlab.runs.stats) -> report (report); `pipeline` skips stages whose inputs are unchanged;
`demo` runs it on the retrieval demo's checkpoint. Entry points live in `cli.py`.
"""
