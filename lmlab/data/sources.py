"""General text sources, by responsibility (this module keeps the names callers import):

lmlab.data.hub       which Hub dataset each corpus is, whether the Hub answers, streaming
                     rows of the Hub or of a local copy (`open_rows`, `open_dataset`)
lmlab.data.corpora   fineweb-edu texts, wikitext articles, dolly-15k and oasst1 chats
lmlab.data.budget    token budgets over a stream of texts, splits by a stable hash
"""

from lmlab.data.budget import encode_stream, stable_fraction, take_tokens, within_budget
from lmlab.data.corpora import (
    dolly_conversations,
    fineweb_edu_texts,
    oasst1_threads,
    wikitext_documents,
)
from lmlab.data.hub import (
    HUB,
    HubDataset,
    SourceUnavailable,
    hf_offline,
    hub_reachable,
    open_dataset,
    open_rows,
)

__all__ = [
    "HUB",
    "HubDataset",
    "SourceUnavailable",
    "dolly_conversations",
    "encode_stream",
    "fineweb_edu_texts",
    "hf_offline",
    "hub_reachable",
    "oasst1_threads",
    "open_dataset",
    "open_rows",
    "stable_fraction",
    "take_tokens",
    "wikitext_documents",
    "within_budget",
]
