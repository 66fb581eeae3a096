"""Surviving mutants that are equivalent to the original (no test can tell them apart), each with
the reason. Keys are mutmut's mutant names (they follow the source: re-judge after an edit of
the function); mutation/run.py leaves them out of the kill rate.

"On CPU" marks a device argument dropped (`device=None`): every tensor of the CPU test suite is
already on the CPU, so only an accelerator run could tell; the parts that can run on PyTorch's
"meta" device are tested there (test_kv.py, test_kv_policies.py) and killed, these could not be.
"""

_SAME_DIM = "the tensor has this many dims, so dim +1/+2 is the same dim as -1/-2"
_DEFAULT_DIM = "the dim argument dropped defaults to the last dim, the one passed"
_INF = 'float("-INF") is float("-inf")'
_ROW_SEED = (
    "another injective map of (seed, row) into the generator's seed range: rows still draw from "
    "distinct, reproducible streams (the contract); only the exact streams change"
)
_H2O_SUM = "mean and sum over the queries differ by the constant factor w: the same top-k"
_POOL_SHAPE = "avg/max pooling is per channel: pooling [N, n] or [N/2, 2, n] gives the same rows"
_NP_INT = "numpy's default integer is int64 here (Linux), and every value is cast to it on use"
_RESET = "assigned again when the first role token opens a message, before it is read"
_STRICT = "the zipped lists always have equal lengths (checked where they are made)"
_NO_QUERIES = (
    "a policy that records no queries (full, streamingllm, random) never reads them; the "
    "queries passed to one that does are tested"
)
_SAME_ATTENTION = (
    "picks another path to the same attention: a mask that allows exactly what the maskless call "
    "allows (every slot valid, or the diagonal already allowed by `itself`), or the per-step "
    "state rebuilt per layer"
)
_CPU_INDEX = "indexing accepts a CPU index tensor on every device (CUDA and meta included)"

EQUIVALENT: dict[str, str] = {
    # ---- model/kv.py
    "lmlab.model.kv.xǁKVCacheǁ__init____mutmut_26": _SAME_ATTENTION,
    "lmlab.model.kv.xǁKVCacheǁ__init____mutmut_27": _SAME_ATTENTION,
    "lmlab.model.kv.xǁKVCacheǁ__init____mutmut_28": _SAME_ATTENTION,
    "lmlab.model.kv.xǁKVCacheǁ_begin_step__mutmut_3": _SAME_ATTENTION,
    "lmlab.model.kv.xǁKVCacheǁ_begin_step__mutmut_17": _SAME_ATTENTION,
    "lmlab.model.kv.xǁKVCacheǁ_begin_step__mutmut_25": _SAME_ATTENTION,
    "lmlab.model.kv.xǁKVCacheǁ_begin_step__mutmut_28": _SAME_ATTENTION,
    "lmlab.model.kv.xǁKVCacheǁ_begin_step__mutmut_29": _SAME_ATTENTION,
    "lmlab.model.kv.xǁKVCacheǁ_begin_step__mutmut_30": _SAME_ATTENTION,
    "lmlab.model.kv.xǁKVCacheǁ_begin_step__mutmut_31": _SAME_ATTENTION,
    "lmlab.model.kv.xǁKVCacheǁ_begin_step__mutmut_32": _SAME_ATTENTION,
    "lmlab.model.kv.xǁKVCacheǁ_begin_step__mutmut_34": _SAME_ATTENTION,
    "lmlab.model.kv.xǁKVCacheǁ_begin_step__mutmut_50": _SAME_ATTENTION,
    "lmlab.model.kv.xǁKVCacheǁ__init____mutmut_19": "None is falsy like False where it is read",
    "lmlab.model.kv.xǁKVCacheǁ__init____mutmut_22": "v is only read after k, and both are set together",
    "lmlab.model.kv.xǁKVCacheǁ_record__mutmut_6": "_record never runs with record_queries = 0",
    "lmlab.model.kv.xǁKVCacheǁ_record__mutmut_7": "_record never runs with record_queries = 0",
    "lmlab.model.kv.xǁKVCacheǁadvance__mutmut_6": _STRICT,
    "lmlab.model.kv.xǁKVCacheǁadvance__mutmut_9": _STRICT,
    "lmlab.model.kv.xǁKVCacheǁadvance__mutmut_10": _STRICT,
    "lmlab.model.kv.xǁKVCacheǁmax_position__mutmut_8": _STRICT,
    "lmlab.model.kv.xǁKVCacheǁmax_position__mutmut_11": _STRICT,
    "lmlab.model.kv.xǁKVCacheǁmax_position__mutmut_12": _STRICT,
    "lmlab.model.kv.xǁKVCacheǁpositions__mutmut_9": _STRICT,
    "lmlab.model.kv.xǁKVCacheǁpositions__mutmut_12": _STRICT,
    "lmlab.model.kv.xǁKVCacheǁpositions__mutmut_13": _STRICT,
    "lmlab.model.kv.xǁKVCacheǁcompress__mutmut_50": _STRICT,
    "lmlab.model.kv.xǁKVCacheǁcompress__mutmut_53": _STRICT,
    "lmlab.model.kv.xǁKVCacheǁcompress__mutmut_54": _STRICT,
    "lmlab.model.kv.xǁKVCacheǁcompress__mutmut_2": (
        "k is None exactly when prefill_len is None here (both are set by the first chunk)"
    ),
    "lmlab.model.kv.xǁKVCacheǁcompress__mutmut_100": _NO_QUERIES,
    "lmlab.model.kv.xǁKVCacheǁcompress__mutmut_105": _NO_QUERIES,
    "lmlab.model.kv.xǁKVCacheǁcompress__mutmut_106": _NO_QUERIES,
    "lmlab.model.kv.xǁKVCacheǁcompress__mutmut_107": _NO_QUERIES,
    "lmlab.model.kv.xǁKVCacheǁcompress__mutmut_108": _NO_QUERIES,
    "lmlab.model.kv.xǁKVCacheǁcompress__mutmut_109": _NO_QUERIES,
    "lmlab.model.kv.xǁKVCacheǁcompress__mutmut_110": _NO_QUERIES,
    "lmlab.model.kv.xǁKVCacheǁconv_window__mutmut_2": (
        "an unpadded first chunk is multiplied by an all-ones mask: unchanged"
    ),
    "lmlab.model.kv.xǁKVCacheǁselect_rows__mutmut_6": _CPU_INDEX,
    "lmlab.model.kv.xǁKVCacheǁselect_rows__mutmut_8": _CPU_INDEX,
    "lmlab.model.kv.xǁKVCacheǁselect_rows__mutmut_15": _CPU_INDEX,
    "lmlab.model.kv.xǁKVCacheǁselect_rows__mutmut_17": _CPU_INDEX,
    "lmlab.model.kv.xǁKVCacheǁtrim__mutmut_1": "valid is None only before any write, when pos is 0",
    "lmlab.model.kv.xǁKVCacheǁtrim__mutmut_4": "with one slot there is nothing before it to drop",
    "lmlab.model.kv.xǁKVCacheǁtrim__mutmut_8": (
        "any over rows then layers is any over layers then rows"
    ),
    "lmlab.model.kv.xǁKVCacheǁupdate__mutmut_70": (
        "the diagonal is added back by the `itself` term of the mask"
    ),
    # ---- model/kv_policies.py
    "lmlab.model.kv_policies.x__pool__mutmut_1": "avg/max pooling with kernel 1 is the identity",
    "lmlab.model.kv_policies.x__pool__mutmut_11": _POOL_SHAPE,
    "lmlab.model.kv_policies.x__pool__mutmut_15": _POOL_SHAPE,
    "lmlab.model.kv_policies.x_attention_scores__mutmut_55": _SAME_DIM,
    "lmlab.model.kv_policies.x_attention_scores__mutmut_66": _INF,
    "lmlab.model.kv_policies.x_kept_length__mutmut_16": (
        "rounding budget * n to 10 instead of 9 decimals removes the same float noise"
    ),
    "lmlab.model.kv_policies.x_row_seed__mutmut_2": _ROW_SEED,
    "lmlab.model.kv_policies.x_row_seed__mutmut_4": _ROW_SEED,
    "lmlab.model.kv_policies.x_row_seed__mutmut_5": _ROW_SEED,
    "lmlab.model.kv_policies.x_row_seed__mutmut_9": _ROW_SEED,
    "lmlab.model.kv_policies.xǁH2OPolicyǁselect__mutmut_10": _H2O_SUM,
    "lmlab.model.kv_policies.xǁH2OPolicyǁselect__mutmut_13": _H2O_SUM,
    "lmlab.model.kv_policies.xǁH2OPolicyǁselect__mutmut_15": "any reduce but 'mean' sums",
    "lmlab.model.kv_policies.xǁH2OPolicyǁselect__mutmut_16": "any reduce but 'mean' sums",
    "lmlab.model.kv_policies.xǁH2OPolicyǁselect__mutmut_22": _DEFAULT_DIM,
    "lmlab.model.kv_policies.xǁSnapKVPolicyǁselect__mutmut_12": (
        "k == w: the heavy part is empty and the window is the last k positions either way"
    ),
    "lmlab.model.kv_policies.xǁSnapKVPolicyǁselect__mutmut_44": _DEFAULT_DIM,
    "lmlab.model.kv_policies.xǁSnapKVPolicyǁselect__mutmut_9": (
        "a row's recorded queries never outnumber its n prompt tokens, so min(.., n) is a no-op"
    ),
    # ---- model/sampling.py
    "lmlab.model.sampling.x_filter_logits__mutmut_2": "top_p 2.0 filters nothing, like 1.0",
    "lmlab.model.sampling.x_filter_logits__mutmut_8": _INF,
    "lmlab.model.sampling.x_filter_logits__mutmut_15": "top-k of all V tokens masks nothing",
    "lmlab.model.sampling.x_filter_logits__mutmut_16": _SAME_DIM + " (logits are [B, V])",
    "lmlab.model.sampling.x_filter_logits__mutmut_22": _DEFAULT_DIM,
    "lmlab.model.sampling.x_filter_logits__mutmut_23": _SAME_DIM + " (logits are [B, V])",
    "lmlab.model.sampling.x_filter_logits__mutmut_35": _INF,
    "lmlab.model.sampling.x_filter_logits__mutmut_41": _DEFAULT_DIM,
    "lmlab.model.sampling.x_filter_logits__mutmut_43": _SAME_DIM + " (logits are [B, V])",
    "lmlab.model.sampling.x_filter_logits__mutmut_48": _SAME_DIM + " (logits are [B, V])",
    "lmlab.model.sampling.x_filter_logits__mutmut_53": _SAME_DIM + " (logits are [B, V])",
    "lmlab.model.sampling.x_filter_logits__mutmut_64": _SAME_DIM + " (logits are [B, V])",
    "lmlab.model.sampling.x_filter_logits__mutmut_73": _INF,
    "lmlab.model.sampling.x_sample_next__mutmut_2": "top_p 2.0 filters nothing, like 1.0",
    "lmlab.model.sampling.x_sample_next__mutmut_12": "argmax ignores the temperature scale",
    "lmlab.model.sampling.x_sample_next__mutmut_13": _SAME_DIM + " (logits are [B, V])",
    "lmlab.model.sampling.x_sample_next__mutmut_28": _SAME_DIM + " (logits are [B, V])",
    # ---- text/chat.py
    "lmlab.text.chat.x__layout__mutmut_76": (
        "a system segment is at least its role token and eot: bos + it is always > 2 tokens"
    ),
    "lmlab.text.chat.x_parse_conversation__mutmut_16": _RESET,
    "lmlab.text.chat.x_parse_conversation__mutmut_17": _RESET,
    "lmlab.text.chat.x_parse_conversation__mutmut_18": _RESET,
    # ---- data/loader.py
    "lmlab.data.loader.x__normalise_sources__mutmut_3": "weights are normalised: 2.0 alone is 1.0",
    "lmlab.data.loader.xǁTokenLoaderǁ__init____mutmut_77": _NP_INT,
    "lmlab.data.loader.xǁTokenLoaderǁ__init____mutmut_79": _NP_INT,
    "lmlab.data.loader.xǁTokenLoaderǁ__init____mutmut_83": (
        "a train loader that also builds a val order never reads it"
    ),
    "lmlab.data.loader.xǁTokenLoaderǁ__init____mutmut_84": (
        "a train loader that also builds a val order never reads it"
    ),
    "lmlab.data.loader.xǁTokenLoaderǁ_build_val_order__mutmut_5": _NP_INT,
    "lmlab.data.loader.xǁTokenLoaderǁ_build_val_order__mutmut_7": _NP_INT,
    "lmlab.data.loader.xǁTokenLoaderǁ_build_val_order__mutmut_15": _NP_INT,
    "lmlab.data.loader.xǁTokenLoaderǁ_build_val_order__mutmut_18": _NP_INT,
    "lmlab.data.loader.xǁTokenLoaderǁ_build_val_order__mutmut_27": "numpy reads kind case-blind",
    "lmlab.data.loader.xǁTokenLoaderǁ_plan__mutmut_9": (
        "seeds are >= 0 in practice and below 2**63: the modulus never applies"
    ),
    "lmlab.data.loader.xǁTokenLoaderǁ_plan__mutmut_10": (
        "seeds are >= 0 in practice and below 2**63: the modulus never applies"
    ),
    "lmlab.data.loader.xǁTokenLoaderǁ_plan__mutmut_11": (
        "one source: choice(1) draws source 0 for every row; another valid seeded stream"
    ),
    "lmlab.data.loader.xǁTokenLoaderǁ_plan__mutmut_27": "integers(n) draws from [0, n) as well",
    "lmlab.data.loader.xǁTokenLoaderǁbatch__mutmut_18": _NP_INT,
    "lmlab.data.loader.xǁTokenLoaderǁbatch__mutmut_21": _NP_INT,
    "lmlab.data.loader.xǁTokenLoaderǁbatch__mutmut_25": _NP_INT,
    "lmlab.data.loader.xǁTokenLoaderǁbatch__mutmut_28": _NP_INT,
    "lmlab.data.loader.xǁTokenLoaderǁbatch__mutmut_48": (
        "the shard's unsigned ids are cast to int64 when written into x and y"
    ),
    "lmlab.data.loader.xǁTokenLoaderǁbatch__mutmut_50": (
        "the shard's unsigned ids are cast to int64 when written into x and y"
    ),
    "lmlab.data.loader.xǁ_Sourceǁ__init____mutmut_20": (
        "the writer skips empty documents: every document has its bos and a token, e - s >= 2"
    ),
    "lmlab.data.loader.xǁ_Sourceǁ__init____mutmut_26": _NP_INT,
    "lmlab.data.loader.xǁ_Sourceǁ__init____mutmut_29": _NP_INT,
    "lmlab.data.loader.xǁ_Sourceǁ__init____mutmut_42": (
        "float64 document offsets are cast back to int64 when batch() stores them"
    ),
    "lmlab.data.loader.xǁ_Sourceǁ__init____mutmut_45": "only an empty document list reaches it",
    "lmlab.data.loader.xǁ_Sourceǁ__init____mutmut_46": "only an empty document list reaches it",
    "lmlab.data.loader.xǁ_Sourceǁ__init____mutmut_47": "only an empty document list reaches it",
    "lmlab.data.loader.xǁ_Sourceǁ__init____mutmut_48": "only an empty document list reaches it",
    "lmlab.data.loader.xǁ_Sourceǁ__init____mutmut_53": _NP_INT,
    "lmlab.data.loader.xǁ_Sourceǁ__init____mutmut_55": _NP_INT,
    "lmlab.data.loader.xǁ_Sourceǁ__init____mutmut_74": _NP_INT,
}
