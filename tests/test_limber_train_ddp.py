"""LiMBeR training under DDP: 2 CPU processes (gloo), with or without accumulation, == 1 process on the same global batch."""

import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_port
from helpers.limber_train_helpers import ddp_train_worker, make_tiny_encoder, make_tiny_lm

from vlbridge.config import to_dict
from vlbridge.training.limber import (
    LimberDataConfig,
    LimberOptimConfig,
    LimberTrainConfig,
    build_limber,
    train_limber,
)


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_two_processes_equal_one_process(tmp_path, accum):
    config = LimberTrainConfig(
        encoder=make_tiny_encoder(tmp_path / "encoder") + ":32px",
        lm=str(make_tiny_lm(tmp_path / "lm")),
        batch_size=4,
        steps=4,
        checkpoint_every=2,
        data=LimberDataConfig(n=12, image_size=32, feature_cache=str(tmp_path / "features")),
        optim=LimberOptimConfig(warmup_steps=1, lr=5e-3),
        projector_init="default",  # the start build_limber gives, so "really moved" below compares with it
    )
    single = train_limber(config, tmp_path / "single")
    result_path = tmp_path / "ddp.pt"
    ddp_config = to_dict(config) | {"grad_accum_steps": accum}  # 2 micro-batches per rank: DDP syncs once
    args = (2, free_port(), ddp_config, str(tmp_path / "ddp"), str(result_path))
    mp.spawn(ddp_train_worker, args=args, nprocs=2, join=True)
    ddp = torch.load(result_path)
    assert [s for s, _ in ddp["losses"]] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(ddp["losses"], single.losses):
        assert a == pytest.approx(b, rel=1e-5)
    for key, value in single.model.projector.state_dict().items():
        torch.testing.assert_close(ddp["projector"][key], value, rtol=1e-5, atol=1e-6)
    # and the projector really moved, so the comparison means something
    initial = build_limber(config, torch.device("cpu")).projector.state_dict()
    assert not torch.equal(initial["proj.weight"], ddp["projector"]["proj.weight"])
