"""`lmlab train`: pretrain or SFT a GPT through the one training loop."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmlab import config as C
from lmlab.cli_common import (
    ConfigOpt,
    DeviceOpt,
    ListProfilesOpt,
    PrintConfigOpt,
    ProfileOpt,
    ResumeOpt,
    RunDirOpt,
    SetOpt,
    resolve_or_exit,
)
from lmlab.train.config import TrainConfig


def train_command(
    phase: Annotated[
        str | None, typer.Option("--phase", help="pretrain | sft (default: the config's).")
    ] = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="Shard directory (repeatable; equal weights)."),
    ] = None,
    device: DeviceOpt = None,
    resume: ResumeOpt = True,
    run_dir: RunDirOpt = None,
    print_config: PrintConfigOpt = False,
    list_profiles: ListProfilesOpt = False,
) -> None:
    """Train a GPT (pretrain or SFT) and write a run directory with checkpoints and metrics.

    Example: lmlab train --profile smoke
    Example: lmlab train --phase pretrain --data runs/data/front_key_bias_train --set steps=500
    Example: torchrun --nproc_per_node 2 -m lmlab train --profile smoke --device cpu
    """
    sets = list(set_ or [])
    if phase:
        sets.append(f"phase={phase}")
    if device:
        sets.append(f"device={device}")
    if data:
        sources = {str(d): 1.0 for d in data}
        sets.append(f"data.sources={C.json_inline(sources)}")
    cfg = resolve_or_exit(
        TrainConfig,
        config=config,
        sets=sets,
        profile=profile,
        print_config=print_config,
        list_profiles=list_profiles,
        profile_dirs=C.profile_dirs(),
    )
    from lmlab.train.run import train

    train(cfg, run_dir=run_dir, resume=resume)
