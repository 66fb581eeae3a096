"""A damaged checkpoint file is named in a one-line error (not safetensors' bare message)."""

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.model.checkpoint import (
    MODEL_FILE,
    OPTIM_TENSORS,
    load_model,
    load_training_state,
    save_checkpoint,
)
from tests.model.tiny import tiny_model


def saved(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.zeros(1, 4, dtype=torch.long)
    model(ids).float().mean().backward()
    opt.step()
    meta = {"model": model.cfg.model_dump(mode="json"), "step": 1}
    return model, opt, save_checkpoint(tmp_path / "ckpt", model, meta, optimizers=[opt])


def truncate(path):
    path.write_bytes(path.read_bytes()[:5])


def test_truncated_weights_name_the_file(tmp_path):
    model, opt, ckpt = saved(tmp_path)
    load_model(ckpt)  # intact: loads
    truncate(ckpt / MODEL_FILE)
    with pytest.raises(LmlabError, match=str(ckpt / MODEL_FILE)) as err:
        load_model(ckpt)
    assert "\n" not in str(err.value)
    with pytest.raises(LmlabError, match=str(ckpt / MODEL_FILE)):
        load_training_state(ckpt, model, [opt])


def test_truncated_optimizer_state_names_the_file(tmp_path):
    model, opt, ckpt = saved(tmp_path)
    truncate(ckpt / OPTIM_TENSORS)
    with pytest.raises(LmlabError, match=str(ckpt / OPTIM_TENSORS)):
        load_training_state(ckpt, model, [opt])
