"""`lmlab retrieval generate`: every split's samples, the tokenizer, token shards and manifests.

    DIR/kv_manifest.json           the whole experiment: spec, splits, tokenizer, leakage check
    DIR/tokenizer/                 BPE trained on the corpus scenario, or word-level
    DIR/<scenario>_train/          shards (sft kind: loss mask = answer tokens; last shard = val),
                                   samples.parquet, manifest.json, heatmap.png
    DIR/eval/                      the same for the mixed eval split (meta split "eval")

Each split folder and the tokenizer are outputs of `lmlab.runs.reuse.reuse_or_build`: a split is
reused when its build key holds the same split hash (spec, seed, counts, words) and the same
tokenizer, its samples alone when the split hash matches; `force` regenerates everything. A
folder is written whole and swapped into place.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from lmlab.config import config_hash
from lmlab.data.shards import ShardWriter
from lmlab.errors import LmlabError
from lmlab.paths import atomic_write_text
from lmlab.runs.report import heatmap
from lmlab.runs.reuse import read_build_key, reuse_or_build
from lmlab.runs.rundir import RunDir
from lmlab.studies.retrieval import buckets as B
from lmlab.studies.retrieval.samples import Sample, draw_samples, encode_samples, stream
from lmlab.studies.retrieval.spec import ExperimentSpec, SplitSpec
from lmlab.studies.retrieval.words import load_words
from lmlab.text.tokenizer import Tokenizer, build_word_tokenizer, load_tokenizer, train_tokenizer

GEN_VERSION = 1
KV_MANIFEST = "kv_manifest.json"
MANIFEST = "manifest.json"
SAMPLES = "samples.parquet"
CHUNK = 2000


def split_dir_name(split: SplitSpec, spec: ExperimentSpec) -> str:
    return "eval" if split is spec.eval else f"{split.name}_train"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def sample_from_row(text: str, query_indices: list[int]) -> Sample:
    """Rebuild a Sample from its parquet row (the pairs are the lines before the first "Q ")."""
    keys, values = [], []
    for line in text.split("\n"):
        if line.startswith("Q "):
            break
        k, v = line.split(" ")
        keys.append(k)
        values.append(v)
    return Sample(keys, values, [int(q) for q in query_indices])


class Generator:
    def __init__(
        self,
        spec: ExperimentSpec,
        out: Path,
        *,
        force: bool = False,
        progress: bool = True,
        echo: Callable[[str], None] = print,
    ):
        self.spec, self.out, self.force, self.progress, self.echo = (
            spec,
            Path(out),
            force,
            progress,
            echo,
        )
        self.words = load_words(spec.words)
        need = 2 * spec.max_pairs()
        if len(self.words) < need:
            worst = max(spec.splits, key=lambda s: s.max_pairs)
            raise LmlabError(
                f"split {worst.name!r} needs {need} distinct words ({worst.max_pairs} keys + "
                f"{worst.max_pairs} values) but the word pool has {len(self.words)} "
                "(raise words.count or lower max_pairs: an impossible range)"
            )
        self.words_hash = config_hash({"words": self.words})
        self.frames: dict[str, pl.DataFrame] = {}
        self.timing: dict[str, dict] = {}

    # ------------------------------------------------------------------ hashes and reuse
    def split_hash(self, split: SplitSpec) -> str:
        return config_hash(
            {
                "v": GEN_VERSION,
                "split": split.model_dump(mode="json", exclude={"description"}),
                "seed": self.spec.seed,
                "counts": self.spec.split_samples(split),
                "words": self.words_hash,
            }
        )

    def tokenizer_key(self) -> str:
        """What determines the tokenizer: its spec and the words (word) or corpus split (bpe)."""
        spec = self.spec.tokenizer
        if spec.kind == "word":
            return config_hash({"tok": spec.kind, "words": self.words_hash})
        corpus = next(s for s in self.spec.scenarios if s.name == spec.corpus)
        return config_hash({"tok": spec.model_dump(), "corpus": self.split_hash(corpus)})

    def fingerprint(self, split: SplitSpec) -> str:
        """Identity of a split's token shards, known before anything is generated."""
        return config_hash({"split": self.split_hash(split), "tok": self.tokenizer_key()})

    def dir(self, split: SplitSpec) -> Path:
        return self.out / split_dir_name(split, self.spec)

    def split_key(self, split: SplitSpec, tok: Tokenizer) -> dict:
        """The build key of a split's folder: its samples and the tokenizer of its shards."""
        return {"split": self.split_hash(split), "tokenizer": tok.hash}

    def _reusable_samples(self, split: SplitSpec) -> bool:
        key = read_build_key(self.dir(split)) or {}
        return not self.force and key.get("split") == self.split_hash(split)

    # ------------------------------------------------------------------ samples
    def samples(self, split: SplitSpec, exclude: set[str] | None = None) -> pl.DataFrame:
        """The split's rows: from its samples.parquet when reusable, else drawn (and written with
        the split's shards)."""
        if split.name in self.frames:
            return self.frames[split.name]
        path = self.dir(split) / SAMPLES
        df = pl.read_parquet(path) if self._reusable_samples(split) else None
        if df is not None and exclude and not set(df["context_hash"]).isdisjoint(exclude):
            df = None  # a reused eval split that collides with new train splits is redrawn
        if df is not None:
            self.timing[split.name] = {"reused": True}
        else:
            df = self._draw(split, exclude)
        self.frames[split.name] = df
        return df

    def _draw(self, split: SplitSpec, exclude: set[str] | None) -> pl.DataFrame:
        n_main, n_val = self.spec.split_samples(split)
        total = n_main + n_val
        rng = stream(self.spec.seed, split.name)
        t0 = time.perf_counter()
        rows: list[dict] = []
        redrawn = 0
        bar = tqdm(total=total, desc=f"generate {split.name}", disable=not self.progress)
        while len(rows) < total:
            k = min(CHUNK, total - len(rows))
            drawn, r = draw_samples(rng, split, self.words, k, exclude)
            redrawn += r
            rows += [s.row() for s in drawn]
            bar.update(k)
        bar.close()
        seconds = time.perf_counter() - t0
        role = "eval" if split is self.spec.eval else None
        for i, row in enumerate(rows):
            row["sample_id"] = i
            row["part"] = role or ("train" if i < n_main else "val")
        self.timing[split.name] = {
            "reused": False,
            "seconds": round(seconds, 3),
            "samples_per_s": round(total / max(seconds, 1e-9), 1),
            "redrawn_for_no_leakage": redrawn,
        }
        self.echo(f"{split.name}: {total} samples in {seconds:.1f}s ({total / seconds:,.0f}/s)")
        return pl.DataFrame(rows)

    # ------------------------------------------------------------------ tokenizer
    def tokenizer(self) -> Tokenizer:
        tok_dir = self.out / "tokenizer"
        key = {"tokenizer": self.tokenizer_key()}
        reuse_or_build(tok_dir, key, self._build_tokenizer, force=self.force)
        return load_tokenizer(tok_dir)

    def _build_tokenizer(self, tmp: Path) -> None:
        spec = self.spec.tokenizer
        if spec.kind == "word":
            build_word_tokenizer(["Q", "A", *self.words], out=tmp)
            return
        corpus = next(s for s in self.spec.scenarios if s.name == spec.corpus)
        df = self.samples(corpus)
        text_file = tmp / "corpus.txt"
        text_file.write_text("".join(df.filter(pl.col("part") == "train")["text"].to_list()))
        train_tokenizer(
            [text_file], kind="bpe", vocab_size=spec.vocab_size, out=tmp, progress=self.progress
        )
        text_file.unlink()
        _write_json(tmp / "retrieval.json", {"corpus": f"{corpus.name}_train"})

    # ------------------------------------------------------------------ shards and manifests
    def write_split(self, dest: Path, split: SplitSpec, tok: Tokenizer, axes_max: int) -> dict:
        """Samples, shards, heat map and manifest of one split, into `dest`; the manifest."""
        df = self.frames[split.name]
        df.write_parquet(dest / SAMPLES)
        shards = self.write_shards(dest, split, df, tok)
        outside = self.write_heatmap(dest, split, df, axes_max)
        man = self.manifest(split, df, tok, shards)
        man["heatmap_axes"] = {"max_pairs": axes_max, "samples_outside_axes": outside}
        _write_json(dest / MANIFEST, man)
        return man

    def write_shards(self, dest: Path, split: SplitSpec, df: pl.DataFrame, tok: Tokenizer) -> dict:
        samples = [
            sample_from_row(t, q)
            for t, q in zip(df["text"].to_list(), df["query_indices"].to_list(), strict=True)
        ]
        encoded = encode_samples(tok, samples)
        parts = df["part"].to_list()
        main = [e for e, p in zip(encoded, parts, strict=True) if p != "val"]
        val = [e for e, p in zip(encoded, parts, strict=True) if p == "val"]
        size = lambda docs: sum(len(ids) + 1 for ids, _ in docs)  # noqa: E731  (+1: bos)
        is_eval = split is self.spec.eval
        # one shard of training samples, then one of validation samples (the last shard is val)
        shard_tokens = max(size(main), size(val), 1)  # neither part is split further
        tok_meta = {**tok.meta(), "path": str((self.out / "tokenizer").resolve())}
        with ShardWriter(
            dest,
            tok_meta,
            kind="sft",
            source=f"retrieval:{split.name}",
            split="eval" if is_eval else "train",
            seed=self.spec.seed,
            shard_tokens=shard_tokens,
            extra={"retrieval": {"split": split.name, "split_hash": self.split_hash(split)}},
        ) as w:
            for ids, mask in main:
                w.add_document(ids, mask)
            w.end_shard()
            for ids, mask in val:
                w.add_document(ids, mask)
        prompt_lens = [1 + mask.index(1) for _, mask in encoded]  # bos + up to the answer
        return {
            "documents": len(encoded),
            "tokens": size(encoded),
            "max_sample_tokens": max(len(ids) + 1 for ids, _ in encoded),
            "mean_sample_tokens": round(size(encoded) / max(1, len(encoded)), 1),
            "max_prompt_tokens": max(prompt_lens),
            "shards": w.close()["counts"]["shards"],
        }

    def write_heatmap(self, dest: Path, split: SplitSpec, df: pl.DataFrame, axes_max: int) -> int:
        asked = df.select("num_pairs", "query_indices").explode("query_indices")
        m, extent, outside = B.count_matrix(asked["num_pairs"], asked["query_indices"], axes_max)
        heatmap(
            m,
            dest / "heatmap.png",
            xlabel="number of pairs",
            ylabel="query index",
            title=f"{split_dir_name(split, self.spec)}: asked keys (axes fixed by eval)",
            extent=extent,
            cbar_label="queries",
        )
        return outside

    def manifest(self, split: SplitSpec, df: pl.DataFrame, tok: Tokenizer, shards: dict) -> dict:
        n_main, n_val = self.spec.split_samples(split)
        is_eval = split is self.spec.eval
        pairs = df["num_pairs"]
        return {
            "split": split.name,
            "role": "eval" if is_eval else "train",
            "dir": split_dir_name(split, self.spec),
            "spec": split.model_dump(mode="json"),
            "split_hash": self.split_hash(split),
            "seed": self.spec.seed,
            "random_stream": {"seed": self.spec.seed, "name": split.name},
            "samples": {"eval": n_main} if is_eval else {"train": n_main, "val": n_val},
            "num_pairs": {"min": pairs.min(), "max": pairs.max(), "mean": round(pairs.mean(), 2)},
            "length_buckets": B.bucket_counts(
                pairs.to_list(), [b[0] for b in B.LENGTH_BUCKETS], B.length_bucket
            ),
            "position_buckets": B.bucket_counts(
                df["query_position"].to_list(), B.POSITION_BUCKETS, B.position_bucket
            ),
            "queries_per_sample": {
                "max": df["num_queries"].max(),
                "mean": df["num_queries"].mean(),
            },
            "tokenizer": {**tok.meta(), "path": str((self.out / "tokenizer").resolve())},
            "shards": shards,
            "files": {"samples": SAMPLES, "shard_meta": "meta.json", "heatmap": "heatmap.png"},
            "generation": self.timing.get(split.name, {}),
        }

    # ------------------------------------------------------------------ the whole experiment
    def run(self, spec_source: str | None = None) -> dict:
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / KV_MANIFEST).unlink(missing_ok=True)
        train_frames = {s.name: self.samples(s) for s in self.spec.scenarios}
        train_hashes = set().union(*(set(df["context_hash"]) for df in train_frames.values()))
        ev = self.spec.eval
        eval_df = self.samples(ev, exclude=train_hashes)
        tok = self.tokenizer()
        axes_max = ev.max_pairs
        splits: dict[str, dict] = {}
        for split in self.spec.splits:
            built = reuse_or_build(
                self.dir(split),
                self.split_key(split, tok),
                lambda tmp, split=split: self.write_split(tmp, split, tok, axes_max),
                # samples drawn anew this run (a redrawn eval split) make new shards
                force=not self.timing[split.name].get("reused"),
            )
            splits[split.name] = built.value or _read_json(self.dir(split) / MANIFEST) or {}
        leakage = self.leakage(eval_df, train_frames)
        if leakage["overlap_total"]:
            raise LmlabError(f"leakage check failed: {leakage}")  # cannot happen: eval redraws
        kv = {
            "experiment": self.spec.model_dump(mode="json"),
            "spec_source": spec_source,
            "root": str(self.out.resolve()),
            "tokenizer": {**tok.meta(), "dir": "tokenizer"},
            "eval": {"dir": "eval", "manifest": f"eval/{MANIFEST}"},
            "splits": {
                name: {"dir": m.get("dir"), "manifest": f"{m.get('dir')}/{MANIFEST}"}
                for name, m in splits.items()
            },
            "leakage": leakage,
            "heatmap_axes": {"max_pairs": axes_max},
            "max_sample_tokens": max(m["shards"]["max_sample_tokens"] for m in splits.values()),
            "generated_s": round(time.perf_counter() - t0, 2),
        }
        _write_json(self.out / KV_MANIFEST, kv)
        return kv

    def leakage(self, eval_df: pl.DataFrame, train_frames: dict[str, pl.DataFrame]) -> dict:
        """Count eval samples whose pairs (ordered) also occur in a train split, measured from
        the written files."""
        eval_hashes = eval_df["context_hash"].to_list()
        by = {}
        for name, df in train_frames.items():
            seen = set(df["context_hash"].to_list())
            by[name] = sum(h in seen for h in eval_hashes)
        union = set().union(*(set(df["context_hash"]) for df in train_frames.values()))
        return {
            "method": "eval samples whose ordered pairs (sha1) occur in any train split (train "
            "or val part); eval and each train split draw from independent random streams",
            "eval_samples": len(eval_hashes),
            "overlap_total": sum(h in union for h in eval_hashes),
            "overlap_by_scenario": by,
            "eval_redrawn_for_no_leakage": self.timing.get(self.spec.eval.name, {}).get(
                "redrawn_for_no_leakage", 0
            ),
        }


def generate(
    spec: ExperimentSpec,
    out: Path,
    *,
    force: bool = False,
    progress: bool = True,
    spec_source: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    return Generator(spec, out, force=force, progress=progress, echo=echo).run(spec_source)


def run_generate(
    spec: ExperimentSpec,
    out: Path,
    *,
    force: bool = False,
    progress: bool = True,
    spec_source: str | Path | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """`generate` with DIR itself as the run directory (config.yaml, metrics, status.json)."""
    run = RunDir.create(spec, name=spec.name, run_dir=out)
    with run.running() as extra:
        gen = Generator(spec, out, force=force, progress=progress, echo=echo)
        kv = gen.run(str(spec_source) if spec_source else None)
        for i, (name, t) in enumerate(gen.timing.items()):
            if not t.get("reused"):
                run.log(i, split=name, samples_per_s=t["samples_per_s"], seconds=t["seconds"])
        run.log(len(gen.timing), eval_overlap_with_train=kv["leakage"]["overlap_total"])
        extra["kv_manifest"] = KV_MANIFEST
    return kv
