"""`lmlab prefs download|prefixes|embed|train-rm|train-dpo|train-grpo|score|eval|viz|demo`.

Every verb reads and writes the seed's file names inside one data folder (`--dir`, default
LMLAB_HOME/prefs): pairs_all.jsonl -> prefixes_all.jsonl -> embeddings/ -> viz/; options name
single files where a step should read something else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lmlab.errors import LmlabError
from lmlab.paths import lmlab_home

app = typer.Typer(
    help="Density-aware preferences: pairs, prefixes, embeddings and density, reward models.",
    no_args_is_help=True,
)

DirOpt = Annotated[
    Path | None, typer.Option("--dir", help="Data folder (default: LMLAB_HOME/prefs).")
]
PairsOpt = Annotated[
    Path | None, typer.Option("--pairs", help="Pairs file (default: DIR/pairs_all.jsonl).")
]
PrefixesOpt = Annotated[
    Path | None,
    typer.Option("--prefixes", help="Prefixes file (default: DIR/prefixes_all.jsonl)."),
]
EmbeddingsOpt = Annotated[
    Path | None, typer.Option("--embeddings", help="Embeddings folder (default: DIR/embeddings).")
]


def data_dir(d: Path | None) -> Path:
    return Path(d) if d else lmlab_home() / "prefs"


@app.command("download")
def download_cmd(
    sources: Annotated[
        str, typer.Option("--sources", help="Comma-separated: hh, ultrafeedback, stackexchange.")
    ] = "hh,ultrafeedback,stackexchange",
    max_per_source: Annotated[
        int | None, typer.Option("--max-per-source", help="At most N pairs from each source.")
    ] = None,
    max_pairs_per_question: Annotated[
        int, typer.Option("--max-pairs-per-question", help="Stack Exchange: pairs per question.")
    ] = 3,
    local: Annotated[
        list[str] | None,
        typer.Option("--local", help="NAME=PATH: read a source from local files (repeatable)."),
    ] = None,
    sample: Annotated[
        bool, typer.Option("--sample", help="Read the small samples shipped with lmlab.")
    ] = False,
    dir_: DirOpt = None,
) -> None:
    """Stream preference pairs from HH-RLHF, UltraFeedback-binarized and Stack-Exchange-
    Preferences into DIR/pairs_all.jsonl; malformed rows are counted per source and reason
    (DIR/download_stats.json).

    Example: lmlab prefs download --sources hh,ultrafeedback --max-per-source 20000
    Example: lmlab prefs download --sample --dir runs/prefs-sample
    """
    from lmlab.paths import atomic_write_text
    from lmlab.studies.preference.pairs import write_jsonl
    from lmlab.studies.preference.sources import SAMPLE_DIR, SOURCES, load_pairs, parse_sources

    names = parse_sources(sources)
    paths: dict[str, str] = {}
    for item in local or []:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise LmlabError(f"--local {item!r}: expected NAME=PATH")
        paths[parse_sources(name)[0]] = path
    out, stats, pairs = data_dir(dir_), {}, []
    for name in names:
        where = paths.get(name) or (str(SAMPLE_DIR / SOURCES[name].sample) if sample else None)
        got, st = load_pairs(name, where, max_per_source, max_pairs_per_question)
        pairs += got
        stats[name] = {"rows": st.rows, "pairs": st.pairs, "malformed": dict(st.malformed)}
        bad = sum(st.malformed.values())
        typer.echo(f"{name}: {st.pairs} pairs from {st.rows} rows, {bad} malformed")
        for reason, n in sorted(st.malformed.items()):
            typer.echo(f"  {n} x {reason}")
    if not pairs:
        raise LmlabError("no pairs were read")
    n = write_jsonl(out / "pairs_all.jsonl", pairs)
    atomic_write_text(out / "download_stats.json", json.dumps(stats, indent=2))
    typer.echo(f"wrote {out / 'pairs_all.jsonl'} ({n} pairs)")


@app.command("prefixes")
def prefixes_cmd(pairs: PairsOpt = None, dir_: DirOpt = None) -> None:
    """Deduplicate pairs by md5(first user message)[:16] -> prefixes_all.jsonl,
    prefix_id_map.tsv and stats.txt in DIR.

    Example: lmlab prefs prefixes --dir runs/prefs-sample
    """
    from lmlab.studies.preference.prefixes import make_prefixes

    out = data_dir(dir_)
    res = make_prefixes(pairs or out / "pairs_all.jsonl", out)
    typer.echo(f"{res['prefixes']} unique prefixes from {res['pairs']} pairs -> {out}")


@app.command("embed")
def embed_cmd(
    embedder: Annotated[
        str, typer.Option("--embedder", help="minilm, or ckpt:RUN (mean-pooled hidden states).")
    ] = "minilm",
    k: Annotated[int, typer.Option("--k", help="Neighbours in the density.")] = 20,
    eps: Annotated[float, typer.Option("--eps", help="weight = 1/(density + eps).")] = 1e-3,
    backend: Annotated[
        str, typer.Option("--backend", help="k-NN: auto (faiss if installed) | faiss | torch.")
    ] = "auto",
    prefixes: PrefixesOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: DIR/embeddings).")
    ] = None,
    dir_: DirOpt = None,
) -> None:
    """Embed every prefix's first user message, then k-NN density and weights 1/(density+eps):
    embeddings.npy, density_weights.npy (sum 1), loss_weights.npy (mean 1), ids.json,
    embeddings_metadata.json.

    Example: lmlab prefs embed --dir runs/prefs-sample --k 10
    """
    from lmlab.studies.preference.embed import compute_embeddings

    d = data_dir(dir_)
    meta = compute_embeddings(
        prefixes or d / "prefixes_all.jsonl", out or d / "embeddings", embedder, k, eps, backend
    )
    w = meta["weights"]
    typer.echo(
        f"embeddings [{meta['n']}, {meta['dim']}] ({meta['knn_backend']} k-NN); weights "
        f"{w['min']:.3g}..{w['max']:.3g}, max/median {w['ratio_max_median']:.2f}, "
        f"sum {w['sum']:.4f} -> {out or d / 'embeddings'}"
    )


@app.command("score")
def score_cmd(
    rm: Annotated[str, typer.Option("--rm", help="Reward-model run (or checkpoint) dir.")],
    pairs: Annotated[Path, typer.Option("--pairs", help="Pairs file to score.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Scores file (default: RM/scores-<pairs>.jsonl).")
    ] = None,
) -> None:
    """Reward of chosen and rejected for every pair, accuracy with a 95% Wilson interval.

    Example: lmlab prefs score --rm runs/rm-1a2b3c4d --pairs runs/prefs-sample/pairs_all.jsonl
    """
    from lmlab.studies.preference.score import score_pairs, summarize, write_scores

    rows, skipped = score_pairs(rm, pairs)
    dest = out or Path(rm) / f"scores-{pairs.stem}.jsonl"
    write_scores(rows, dest)
    s = summarize(rows)
    if s["accuracy"] is None:
        raise LmlabError(f"{pairs}: no pair fits the model's context ({skipped} skipped)")
    typer.echo(
        f"accuracy {s['accuracy']:.4f} [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}] on "
        f"{s['pairs']} pairs ({skipped} too long), mean margin {s['mean_margin']:.4f} -> {dest}"
    )


@app.command("eval")
def eval_cmd(
    policy: Annotated[str, typer.Option("--policy", help="Trained policy run (e.g. train-dpo).")],
    rm: Annotated[str, typer.Option("--rm", help="Reward-model run that judges the answers.")],
    pairs: Annotated[Path, typer.Option("--pairs", help="Pairs file whose prompts are asked.")],
    base: Annotated[
        str | None, typer.Option("--base", help="Policy to beat (default: the policy's init_from).")
    ] = None,
    embeddings: Annotated[
        Path | None, typer.Option("--embeddings", help="Embeddings folder: win rate by density.")
    ] = None,
    max_prompts: Annotated[int | None, typer.Option("--max-prompts", help="At most N.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Answer cap.")] = 32,
    out: Annotated[
        Path | None, typer.Option("--out", help="Results (default: POLICY/eval-<pairs>.json).")
    ] = None,
) -> None:
    """Win rate of the policy's greedy answers over the base policy's under a reward model,
    overall and by density quartile, with 95% Wilson intervals.

    Example: lmlab prefs eval --policy runs/dpo-1a2b3c4d --rm runs/rm-5e6f7a8b --pairs test.jsonl
    """
    from lmlab.paths import atomic_write_text
    from lmlab.studies.preference.policy_eval import evaluate_policy

    res = evaluate_policy(policy, rm, pairs, base, embeddings, max_prompts, max_new_tokens)
    dest = out or Path(policy) / f"eval-{pairs.stem}.json"
    atomic_write_text(dest, json.dumps(res, indent=2))
    o = res["overall"]
    typer.echo(
        f"win rate {o['win_rate']:.4f} [{o['ci95'][0]:.4f}, {o['ci95'][1]:.4f}] over "
        f"{o['n']} prompts against {res['base']} -> {dest}"
    )


@app.command("viz")
def viz_cmd(
    method: Annotated[
        str, typer.Option("--method", help="auto (UMAP if installed) | umap | pca.")
    ] = "auto",
    prefixes: PrefixesOpt = None,
    embeddings: EmbeddingsOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder (default: DIR/viz).")] = None,
    dir_: DirOpt = None,
) -> None:
    """3-D coordinates of the prompt embeddings -> embeddings_3d.json and a self-contained
    interactive page embeddings_3d.html (colour = source, size = weight).

    Example: lmlab prefs viz --dir runs/prefs-sample
    """
    from lmlab.studies.preference.viz import write_viz

    d = data_dir(dir_)
    res = write_viz(
        embeddings or d / "embeddings",
        prefixes or d / "prefixes_all.jsonl",
        out or d / "viz",
        method,
    )
    typer.echo(f"{res['points']} points ({res['method']}) -> {res['out']}/embeddings_3d.html")


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Demo folder.")] = Path("runs/prefs-demo"),
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per arm.")] = 3,
    steps: Annotated[int | None, typer.Option("--steps", help="Steps per reward model.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete OUT first.")] = False,
    policy: Annotated[
        bool, typer.Option("--policy/--no-policy", help="Then the policy stage (demo-policy).")
    ] = True,
) -> None:
    """Synthetic preferences with rare and common topics -> MiniLM density -> reward models,
    uniform vs density-aware, -> held-out accuracy on rare and common prompts (report.md); then
    the policy stage: SFT start -> DPO uniform vs density-aware (policy_report.md).

    Example: lmlab prefs demo --out runs/prefs-demo
    """
    from lmlab.studies.preference.demo import RM_DEMO, run_demo

    if fresh and out.exists():
        import shutil

        shutil.rmtree(out)
    report = run_demo(out, tuple(range(seeds)), steps or RM_DEMO["steps"], echo=typer.echo)
    typer.echo(f"report: {report}")
    if policy:
        demo_policy_cmd(out=out)


@app.command("demo-policy")
def demo_policy_cmd(
    out: Annotated[Path, typer.Option("--out", help="Demo folder.")] = Path("runs/prefs-demo"),
) -> None:
    """The demo's policy stage on its data: SFT start -> DPO uniform vs density-aware ->
    held-out answers and implicit-reward accuracy, rare vs common topics (policy_report.md).
    The data come from `lmlab prefs demo` (written here first when missing).

    Example: lmlab prefs demo-policy --out runs/prefs-demo
    """
    from lmlab.studies.preference.demo import prepare_data
    from lmlab.studies.preference.policy_demo import run_policy_stage

    prepare_data(out, 20, 1e-3, typer.echo)
    run_policy_stage(out, echo=typer.echo)
    typer.echo(f"report: {out / 'policy_report.md'}")


# the training verbs (train-rm, train-dpo, train-grpo) live in their own file, on this app
from lmlab.studies.preference import cli_train  # noqa: E402, F401
