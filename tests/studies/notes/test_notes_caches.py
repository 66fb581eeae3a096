"""`lmlab cache build-all`: layout, budgets, SFT masks, skip/rebuild/force, bad input, offline."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from notes_testkit import build_sample, go_offline, write_public_corpora
from typer.testing import CliRunner

from lmlab.data.shards import ShardDir
from lmlab.errors import LmlabError
from lmlab.studies.notes import cache_jobs
from lmlab.studies.notes.cache_cli import cache_app
from lmlab.studies.notes.caches import BuildOptions, build_all
from lmlab.studies.notes.paths import SAMPLE_PRIMER, SAMPLE_ROAM_DIR
from lmlab.studies.notes.primer import DIALOGUE_DELIM, load_primer, split_dialogues
from lmlab.text.tokenizer import load_tokenizer

runner = CliRunner()


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    go_offline(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def sample_build(tmp_path_factory):
    """(tokenizer dir, cache dir) of the shipped sample, built once for this module."""
    return build_sample(tmp_path_factory.mktemp("notes-sample"))


def opts(cache_dir, tok_dir, **kw):
    base = dict(
        cache_dir=cache_dir,
        tokenizer=tok_dir,
        roam_dir=SAMPLE_ROAM_DIR,
        primer=SAMPLE_PRIMER,
        only=("roam", "primer"),
        progress=False,
    )
    return BuildOptions(**{**base, **kw})


def states(results):
    return {f"{r.kind}/{r.name}": r.state for r in results}


def test_build_all_writes_every_cache_from_local_corpora(tmp_path, sample_build):
    tok_dir, _ = sample_build
    paths = write_public_corpora(tmp_path / "hub")
    cache = tmp_path / "cache"
    args = ["build-all", "--cache-dir", cache, "--tokenizer", tok_dir, "--seed", "3"]
    args += ["--fineweb-path", paths["fineweb_edu"], "--wikitext-path", paths["wikitext"]]
    args += ["--dolly-path", paths["dolly15k"], "--oasst-path", paths["oasst1"]]
    args += ["--fineweb-train-tokens", "300", "--fineweb-val-tokens", "100", "--no-progress"]
    args += ["--heldout-frac", "0.2"]
    result = runner.invoke(cache_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    for kind, names in (
        ("pretrain", ["fineweb_edu", "wikitext", "roam", "primer"]),
        ("sft", ["dolly15k", "oasst1", "primer"]),
    ):
        for name in names:
            assert f"{kind}/{name}" in result.output
            for split in ("train", "val"):
                d = ShardDir(cache / kind / name / split)
                assert d.kind == kind and d.meta["split"] == split and d.n_tokens > 0
                assert d.meta["source"] == name and d.meta["build"]["seed"] == 3
                assert d.tokenizer_meta["path"] == str(tok_dir.resolve())
    fw = {s: ShardDir(cache / "pretrain" / "fineweb_edu" / s) for s in ("train", "val")}
    doc = max(len(t) for t, _ in fw["val"].documents())
    assert 100 <= fw["val"].n_tokens - fw["val"].n_documents < 100 + doc  # budget, then one doc
    assert 300 <= fw["train"].n_tokens - fw["train"].n_documents < 300 + doc
    tok = load_tokenizer(tok_dir)
    val_texts = {tok.decode(t[1:]) for t, _ in fw["val"].documents()}
    assert not val_texts & {tok.decode(t[1:]) for t, _ in fw["train"].documents()}
    wiki_val = [tok.decode(t[1:]) for t, _ in ShardDir(cache / "pretrain/wikitext/val").documents()]
    assert len(wiki_val) == 3 and all(t.startswith("= val article") for t in wiki_val)
    oasst = ShardDir(cache / "sft/oasst1/val")
    assert oasst.n_documents == 4  # 2 trees x 2 threads, from the validation file
    assert ShardDir(cache / "sft/oasst1/train").n_documents == 12


def test_sft_loss_mask_covers_assistant_content_and_eot_only(tmp_path, sample_build):
    tok_dir, cache = sample_build
    tok = load_tokenizer(tok_dir)
    role = {tok.special_id(r): r for r in ("system", "user", "assistant")}
    for ids, mask in ShardDir(cache / "sft/primer/train").documents():
        ids, mask = np.asarray(ids), np.asarray(mask)
        current = None
        for i, (t, m) in enumerate(zip(ids.tolist(), mask.tolist(), strict=True)):
            if t in role:
                current = role[t]
                assert m == 0
            elif i == 0:
                assert t == tok.bos_id and m == 0
            else:
                assert m == (current == "assistant"), (i, t, current)
        assert ids[-1] == tok.eot_id and mask[-1] == 1


def test_primer_val_dialogues_are_the_same_in_pretrain_and_sft(sample_build):
    _, cache = sample_build
    pre = [np.asarray(t).tolist() for t, _ in ShardDir(cache / "pretrain/primer/val").documents()]
    sft = [np.asarray(t).tolist() for t, _ in ShardDir(cache / "sft/primer/val").documents()]
    assert pre == sft and len(pre) >= 1


def test_reruns_skip_rebuild_when_inputs_change_and_force_rebuilds(tmp_path, sample_build):
    tok_dir, _ = sample_build
    primer = tmp_path / "primer.txt"
    shutil.copy(SAMPLE_PRIMER, primer)
    o = opts(tmp_path / "cache", tok_dir, primer=primer)
    assert set(states(build_all(o)).values()) == {"built"}
    assert set(states(build_all(o)).values()) == {"skipped"}
    primer.write_text(primer.read_text() + "\n<dialogue>\n\nuser: new?\nassistant: yes.\n")
    again = {f"{r.kind}/{r.name}": r for r in build_all(o)}
    assert again["pretrain/roam"].state == "skipped"
    assert again["pretrain/primer"].state == again["sft/primer"].state == "rebuilt"
    assert "changed: dialogues, inputs" in again["sft/primer"].note
    o.force = True
    assert set(states(build_all(o)).values()) == {"rebuilt"}
    o.force, o.seed = False, 7
    assert set(states(build_all(o)).values()) == {"rebuilt"}  # the seed moves the splits
    (tmp_path / "cache" / "pretrain" / "roam" / "build.json").unlink()  # built before build.json
    assert states(build_all(o))["pretrain/roam"] == "skipped"  # its metas' key is adopted
    (tmp_path / "cache" / "pretrain" / "roam" / "val" / "meta.json").unlink()
    again = {f"{r.kind}/{r.name}": r for r in build_all(o)}
    assert again["pretrain/roam"].state == "rebuilt" and "unfinished" in again["pretrain/roam"].note


def test_an_interrupted_build_leaves_the_previous_cache_and_no_debris(
    tmp_path, sample_build, monkeypatch
):
    tok_dir, _ = sample_build
    o = opts(tmp_path / "cache", tok_dir, only=("roam",))
    build_all(o)
    before = (tmp_path / "cache/pretrain/roam/train/meta.json").read_text()
    real = cache_jobs.roam_job

    def broken(opts, tok):
        job = real(opts, tok)

        def produce():
            def docs():
                yield [7, 8, 9]
                raise KeyboardInterrupt

            return {"train": docs(), "val": docs()}

        job.produce = produce
        return job

    monkeypatch.setattr(cache_jobs, "roam_job", broken)
    o.force = True
    with pytest.raises(KeyboardInterrupt):
        build_all(o)
    assert (tmp_path / "cache/pretrain/roam/train/meta.json").read_text() == before
    assert [p.name for p in (tmp_path / "cache/pretrain").iterdir()] == ["roam"]


def test_unreachable_public_corpora_are_reported_and_the_rest_is_built(tmp_path, sample_build):
    tok_dir, _ = sample_build
    args = ["build-all", "--cache-dir", str(tmp_path / "c"), "--tokenizer", str(tok_dir)]
    result = runner.invoke(cache_app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    for name, flag in (
        ("fineweb_edu", "--fineweb-path"),
        ("wikitext", "--wikitext-path"),
        ("dolly15k", "--dolly-path"),
        ("oasst1", "--oasst-path"),
    ):
        assert f"unavailable: {name}:" in result.output and flag in result.output
        assert not (tmp_path / "c" / "pretrain" / name).exists()
        assert not (tmp_path / "c" / "sft" / name).exists()
    assert (tmp_path / "c/pretrain/roam/val/meta.json").is_file()
    named = runner.invoke(cache_app, [*args, "--only", "fineweb_edu"])
    assert named.exit_code == 1 and isinstance(named.exception, LmlabError)
    assert "--fineweb-path" in str(named.exception)


def test_bad_input_is_a_one_line_error_with_exit_1(tmp_path, sample_build):
    tok_dir, _ = sample_build
    (tmp_path / "export").mkdir()
    common = ["build-all", "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    cases = [
        (
            [*common, "--tokenizer", str(tok_dir), "--roam-dir", str(tmp_path / "export")],
            "no markdown (*.md) files under",
        ),
        ([*common, "--tokenizer", str(tmp_path / "none")], "tokenizer not found"),
        ([*common, "--tokenizer", str(tok_dir), "--only", "roam,nope"], "unknown source(s) nope"),
    ]
    for args, message in cases:
        result = runner.invoke(cache_app, args)
        assert result.exit_code == 1 and isinstance(result.exception, LmlabError)
        assert message in str(result.exception)
    # through the real command line: one line on stderr, exit status 1, no traceback
    proc = subprocess.run(
        [sys.executable, "-m", "lmlab", "cache", *cases[0][0]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: no markdown (*.md) files under {tmp_path / 'export'}: a Roam export holds one .md file per page (Roam: ... -> Export All -> Markdown)"
    ]


def test_special_token_literals_in_notes_never_become_control_ids(tmp_path, sample_build):
    tok_dir, _ = sample_build
    roam = tmp_path / "roam"
    roam.mkdir()
    (roam / "a.md").write_text("- a note that says <|eot|> and <|assistant|> in its text\n")
    (roam / "b.md").write_text("- another with <|bos|><|system|>\n")
    primer = tmp_path / "primer.txt"
    primer.write_text(
        "user: say <|eot|> please\nassistant: fine: <|eot|> <|user|>\n\n<dialogue>\n\n"
        "user: hi\nassistant: hello <|system|>\n"
    )
    build_all(opts(tmp_path / "c", tok_dir, roam_dir=roam, primer=primer, val_frac=0.5))
    tok = load_tokenizer(tok_dir)
    control = set(tok.special_ids.values())
    for split in ("train", "val"):
        for ids, _ in ShardDir(tmp_path / f"c/pretrain/roam/{split}").documents():
            ids = np.asarray(ids).tolist()
            assert ids[0] == tok.bos_id and not control & set(ids[1:])
            assert "<|eot|>" in tok.decode(ids[1:]) or "<|bos|>" in tok.decode(ids[1:])
        for ids, _ in ShardDir(tmp_path / f"c/sft/primer/{split}").documents():
            ids = np.asarray(ids).tolist()
            # the template's control ids only: bos, then one role token and one eot per turn
            assert ids.count(tok.eot_id) == 2 and ids.count(tok.special_id("user")) == 1


def test_sft_context_drops_oldest_turns_and_never_cuts_an_answer(tmp_path, sample_build):
    tok_dir, _ = sample_build
    blocks = [
        "".join(f"user: question {i} " + "word " * 20 + "\nassistant: answer\n" for i in range(6)),
        "user: " + "huge " * 300 + "\nassistant: no.\n",
        *[f"user: short {i}?\nassistant: yes.\n" for i in range(4)],
    ]
    primer = tmp_path / "primer.txt"
    primer.write_text(DIALOGUE_DELIM.join(blocks))
    # a seed whose one val dialogue is a short one (an empty val split is an error)
    seed = next(
        s
        for s in range(100)
        if "short" in split_dialogues(load_primer(primer), 0.17, s)[1][0].messages[0]["content"]
    )
    o = opts(tmp_path / "c", tok_dir, primer=primer, only=("primer",), sft_context=80, seed=seed)
    o.val_frac = 0.17
    build_all(o)
    tok = load_tokenizer(tok_dir)
    metas = [
        json.loads((tmp_path / f"c/sft/primer/{s}/meta.json").read_text()) for s in ("train", "val")
    ]
    stats = {k: sum(m["build_stats"].get(k, 0) for m in metas) for k in ("truncated", "too long")}
    assert stats == {"truncated": 1, "too long": 1}
    docs = [
        np.asarray(t).tolist()
        for s in ("train", "val")
        for t, _ in ShardDir(tmp_path / f"c/sft/primer/{s}").documents()
    ]
    assert len(docs) == 5 and all(len(d) <= 80 and d[-1] == tok.eot_id for d in docs)
    kept = next(tok.decode(d) for d in docs if "question" in tok.decode(d))
    assert "question 5" in kept and "question 0" not in kept
