"""Surviving mutants that are equivalent to the original (no test can tell them apart), each with
the reason. Keys are mutmut's mutant names; mutation/run.py leaves them out of the kill rate."""

EQUIVALENT: dict[str, str] = {}
