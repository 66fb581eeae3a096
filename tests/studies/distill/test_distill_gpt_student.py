"""The GPT-encoder student (recipe_args.student=gpt): masked mean pooling, unit outputs, it learns
the teacher's neighbours from text alone, checkpoints rebuild it, bad configs are one line."""

import json

import numpy as np
import pytest
import torch

import lmlab.studies.distill  # noqa: F401  (registers the recipe and the students)
from lmlab.errors import LmlabError
from lmlab.model.checkpoint import load_model, save_checkpoint
from lmlab.model.config import ModelConfig
from lmlab.model.gpt import GPT
from lmlab.model.pooling import masked_mean
from lmlab.studies.distill.cli import resolve_train_config
from lmlab.studies.distill.config import DistillArgs
from lmlab.studies.distill.loss import distill_loss
from lmlab.studies.distill.metrics import NeighbourEval
from lmlab.studies.distill.recipe import DistillRecipe
from lmlab.studies.distill.student import PAD, GPTStudent
from lmlab.train.config import TrainConfig
from lmlab.train.run import train

TOPICS = [
    "coffee kettle bread butter oven toast",
    "garden tulip shovel hedge compost seeds",
    "engine wheel brake clutch piston gear",
    "violin piano chord melody rhythm drum",
    "river canoe paddle rapids shore trout",
    "planet comet orbit rocket galaxy moon",
    "market price trade stock bond profit",
    "winter snow sledge frost scarf glove",
]


def word_corpus(folder, n=240, seed=0):
    """Sentences of topic words, and a teacher that is a bag of those words' vectors: the
    neighbours are a function of the text, so a text-only student can learn them."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(TOPICS), 16))
    vocab = {}
    for t, line in enumerate(TOPICS):
        for w in line.split():
            vocab[w] = centres[t] + 0.7 * rng.standard_normal(16)
    words = list(vocab)
    texts, emb = [], []
    for _ in range(n):
        topic = TOPICS[rng.integers(len(TOPICS))].split()
        picked = list(rng.choice(topic, 3, replace=False)) + list(rng.choice(words, 1))
        texts.append("the " + " and ".join(picked))
        emb.append(sum(vocab[w] for w in picked))
    np.save(folder / "t.npy", np.asarray(emb, dtype=np.float32))
    (folder / "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return folder / "t.npy", folder / "t.jsonl"


def gpt_config(npy, texts, **args):
    data = {
        "recipe": "distill",
        "name": "gpt-student",
        "steps": 40,
        "micro_batch": 16,
        "eval_every": 20,
        "ckpt_every": 0,
        "log_every": 5,
        "eval_at_start": True,
        "progress": False,
        "device": "cpu",
        "peak_flops": 1e12,  # skip measuring the matmul peak (MFU only)
        "optim": {"lr": 0.006, "lr_ref_width": None},
        "schedule": {"warmup_steps": 4},
        "recipe_args": {
            "teacher_npy": str(npy),
            "teacher_texts": str(texts),
            "student": "gpt",
            "gpt": {"model": {"depth": 1, "n_embd": 32}, "vocab_size": 400, "max_len": 32},
            "k": 8,
            "neg_m": 32,
            "queue_size": 128,
            "dim": 8,
            **args,
        },
    }
    return TrainConfig.model_validate(data)


def tiny_student(seed=0, dim=6):
    torch.manual_seed(seed)
    cfg = {"depth": 1, "n_embd": 32, "vocab_size": 50, "seq_len": 12}
    model = GPTStudent(cfg, dim=dim, queue_size=4)
    with torch.no_grad():  # the GPT zero-inits its output projections: make every weight matter
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def test_masked_mean_ignores_padded_positions():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [float("inf"), 9.0]]])
    mask = torch.tensor([[True, True, False]])
    assert masked_mean(h, mask).tolist() == [[2.0, 3.0]]  # not inf, not divided by 3


def test_padding_content_and_width_do_not_change_the_embedding():
    model = tiny_student()
    ids = torch.tensor([[1, 7, 9, 4, 0, 0], [1, 3, 3, 8, 2, 5]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    base = model.encode(ids, mask)
    junk = ids.clone()
    junk[0, 4:] = torch.tensor([42, 17])  # other tokens where row 0 is padding
    assert torch.allclose(model.encode(junk, mask), base, atol=1e-6)
    alone = model(torch.tensor([[1, 7, 9, 4]]))  # row 0 with no padding at all
    assert torch.allclose(alone[0], base[0], atol=1e-6)
    padded = model(torch.tensor([[1, 7, 9, 4, PAD, PAD, PAD]]))
    assert torch.allclose(padded[0], base[0], atol=1e-6)
    # and the pooling does read the real tokens: changing one changes the embedding
    other = ids.clone()
    other[0, 2] = 11
    assert not torch.allclose(model.encode(other, mask)[0], base[0], atol=1e-3)


def test_batch_with_repeats_and_mixed_lengths_equals_each_row_alone():
    model = tiny_student(seed=2)
    model.chunk_rows = 2  # several length-sorted chunks
    rows = torch.tensor(
        [
            [1, 5, 6, 7, 8, PAD],
            [1, 9, PAD, PAD, PAD, PAD],
            [1, 5, 6, 7, 8, PAD],  # a repeat of row 0
            [1, 2, 2, 3, 4, 4],  # id order and length order differ
            [1, 7, 4, PAD, PAD, PAD],
        ]
    )
    batched = model(rows)
    for i, row in enumerate(rows):
        real = row[row != PAD][None]
        assert torch.allclose(batched[i], model.encode(real, real >= 0)[0], atol=1e-6), i


def test_output_is_unit_norm_with_the_asked_dim():
    model = tiny_student(dim=6)
    rows = torch.tensor([[1, 5, 6, PAD], [1, 2, PAD, PAD], [1, 9, 9, 9]])
    z = model(rows)
    assert z.shape == (3, 6)
    assert torch.allclose(z.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_checkpoint_rebuilds_the_same_outputs(tmp_path):
    model = tiny_student(seed=3)
    save_checkpoint(tmp_path / "ckpt", model, {"arch": model.arch(), "step": 1})
    back, meta = load_model(tmp_path / "ckpt")
    assert isinstance(back, GPTStudent) and meta["arch"]["class"] == "distill_gpt_student"
    rows = torch.tensor([[1, 5, 6, PAD], [1, 2, 3, 4]])
    assert torch.equal(back.eval()(rows), model(rows))


def test_gpt_student_learns_neighbours_from_text_and_its_checkpoint_rebuilds(tmp_path):
    npy, texts = word_corpus(tmp_path)
    cfg = gpt_config(npy, texts)
    run = train(cfg, run_dir=tmp_path / "run")
    rows = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    recall = [r["vs_teacher_recall10"] for r in rows if "vs_teacher_recall10" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert recall[-1] > recall[0] + 0.1  # from the untrained encoder (step 0) to the last eval
    assert np.mean(losses[-2:]) < 0.7 * losses[0]
    assert (run.path / "tokenizer" / "tokenizer.json").exists()  # BPE trained on the items
    # the rebuilt final student scores exactly what the run logged at its last step
    model, meta = load_model(run.path / "checkpoints" / "latest")
    assert isinstance(model, GPTStudent) and meta["tokenizer"]["vocab_size"] <= 400
    _, _, p = DistillRecipe().prepare(cfg, cfg.args())
    judge = NeighbourEval(torch.from_numpy(p.teacher.emb), torch.from_numpy(p.query_ids), 10)
    got = judge.score(model.embed(p.text.rows))["vs_teacher_recall10"]
    assert got == pytest.approx(recall[-1], abs=1e-9)


def test_refreshed_negatives_are_the_current_students_embeddings():
    model = tiny_student(seed=1, dim=4)
    rows = torch.tensor([[1, 5, 6, PAD], [1, 2, 3, 4], [1, 7, PAD, PAD], [1, 8, 9, PAD]])
    teacher = torch.nn.functional.normalize(
        torch.randn(4, 5, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    knn_idx = torch.tensor([[1], [0], [3], [2]])
    knn_sim = (teacher * teacher[knn_idx[:, 0]]).sum(-1, keepdim=True)
    batch = {"anchors": torch.tensor([0]), "neg_slots": torch.tensor([0, 1])}

    def loss_with(queue_emb, **args):
        model.queue.count.zero_(), model.queue.ptr.zero_()
        model.queue.enqueue(torch.tensor([2, 3]), queue_emb)
        a = DistillArgs(teacher_texts="t.txt", teacher_npy="t.npy", student="gpt", k=1, neg_m=2,
                        queue_size=4, false_neg_mode="none", **args)  # fmt: skip
        return distill_loss(model, batch, teacher, knn_idx, knn_sim, a, inputs=rows)[0].item()

    current = model(rows[[2, 3]]).detach()
    stale = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    assert loss_with(stale) == pytest.approx(loss_with(current), abs=1e-6)  # refreshed: gpt default
    off = {"refresh_negatives": False}
    assert loss_with(stale, **off) != pytest.approx(loss_with(current, **off), abs=1e-3)
    assert loss_with(current, **off) == pytest.approx(loss_with(current), abs=1e-6)


def test_init_from_a_gpt_checkpoint_starts_the_encoder_there(tmp_path):
    npy, texts = word_corpus(tmp_path, n=60)
    # a GPT "pretrained" run: the corpus tokenizer, random weights, run-dir layout
    cfg0 = gpt_config(npy, texts)
    _, tok, _ = DistillRecipe().prepare(cfg0, cfg0.args())
    lm_cfg = ModelConfig(depth=1, n_embd=32, vocab_size=tok.vocab_size, seq_len=24)
    torch.manual_seed(1)
    lm = GPT(lm_cfg)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tok.save(tmp_path / "lm" / "tokenizer")
    arch = {"class": "gpt", "config": lm_cfg.model_dump(mode="json")}
    save_checkpoint(tmp_path / "lm" / "checkpoints" / "latest", lm, {"arch": arch, "step": 5})
    gpt_args = {"init_from": str(tmp_path / "lm"), "max_len": 16}
    cfg = gpt_config(npy, texts, gpt=gpt_args)
    ctx_parts = DistillRecipe().prepare(cfg, cfg.args())
    from lmlab.studies.distill.recipe import build_student

    student = build_student(cfg.args(), ctx_parts[2])
    assert student.cfg == lm_cfg
    for name, w in lm.state_dict().items():
        if not name.startswith("lm_head."):
            assert torch.equal(student.gpt.state_dict()[name], w), name
    too_long = gpt_config(npy, texts, gpt={**gpt_args, "max_len": 32})
    with pytest.raises(LmlabError, match=r"max_len=32 exceeds the seq_len of init_from .*=24"):
        DistillRecipe().prepare(too_long, too_long.args())


def one_line_error(fn, *args) -> str:
    with pytest.raises(LmlabError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_gpt_student_configs_are_one_line_errors(tmp_path):
    npy, texts = word_corpus(tmp_path, n=30)

    def resolve(*sets):
        return resolve_train_config(None, [f"recipe_args.teacher_npy={npy}", *sets], None, True)

    gpt = (f"recipe_args.teacher_texts={texts}", "recipe_args.student=gpt")
    assert one_line_error(resolve, "recipe_args.student=bert") == (
        "recipe_args.student: unknown student 'bert' (use projection or gpt)"
    )
    msg = one_line_error(
        resolve, *gpt, "recipe_args.gpt.max_len=80", "recipe_args.gpt.model.seq_len=64"
    )
    assert msg == (
        "recipe_args.gpt.max_len=80 exceeds recipe_args.gpt.model.seq_len=64 (the encoder's context)"
    )
    msg = one_line_error(resolve, *gpt, "recipe_args.gpt.model.n_layr=2")
    assert msg.startswith("recipe_args.gpt.model.n_layr: Extra inputs are not permitted")
    msg = one_line_error(resolve, "recipe_args.student=gpt")
    assert "student=gpt reads the items' texts, which a teacher_npy lacks" in msg
    short = tmp_path / "short.txt"
    short.write_text("one text\nanother text\n")
    cfg = resolve(f"recipe_args.teacher_texts={short}", "recipe_args.student=gpt")
    msg = one_line_error(DistillRecipe().prepare, cfg, cfg.args())
    assert msg.endswith(
        "short.txt has 2 texts but the teacher matrix has 30 rows (one text per row)"
    )


def test_cli_unknown_student_is_one_line(tmp_path, lmlab_cli):
    npy, _ = word_corpus(tmp_path, n=30)
    proc = lmlab_cli(
        "distill", "train", "--no-env", "--npy", npy, "--set", "recipe_args.student=bert"
    )
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1
    assert "recipe_args.student: unknown student 'bert'" in proc.stderr
