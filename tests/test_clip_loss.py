"""ClipLoss: equals open_clip's loss on one process, and on 2 gloo processes every gather mode gives
the single-process loss and (after DDP-style gradient averaging) the single-process gradient."""

from __future__ import annotations

import math
import os

import open_clip
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from helpers.clip_fixtures import run_processes

from vlbridge.errors import UserError
from vlbridge.training.loss import ClipLoss, scale_gradient

N, D, E = 8, 6, 5  # global batch, input dim, embedding dim
MODES = [
    {"local_loss": False, "gather_with_grad": False},
    {"local_loss": False, "gather_with_grad": True},
    {"local_loss": True, "gather_with_grad": True},
]


def problem():
    """Inputs and parameters shared by every process: features = normalize(x @ W), scale = exp(s)."""
    generator = torch.Generator().manual_seed(0)
    images, texts = torch.randn(N, D, generator=generator), torch.randn(N, D, generator=generator)
    weight_image, weight_text = torch.randn(D, E, generator=generator), torch.randn(D, E, generator=generator)
    return images, texts, weight_image, weight_text, torch.tensor(math.log(1 / 0.07))


def loss_and_grads(loss_fn: ClipLoss, rows: slice):
    images, texts, weight_image, weight_text, log_scale = problem()
    params = [p.requires_grad_() for p in (weight_image, weight_text, log_scale)]
    image_features = F.normalize(images[rows] @ weight_image, dim=-1)
    text_features = F.normalize(texts[rows] @ weight_text, dim=-1)
    loss = loss_fn(image_features, text_features, log_scale.exp())
    (loss * loss_fn.grad_scale).backward()
    return loss.detach(), [p.grad for p in params]


def test_single_process_equals_open_clip_loss():
    images, texts, weight_image, weight_text, log_scale = problem()
    results = []
    for loss_fn in (ClipLoss(), open_clip.ClipLoss()):
        params = [p.clone().requires_grad_() for p in (weight_image, weight_text, log_scale)]
        image_features = F.normalize(images @ params[0], dim=-1)
        text_features = F.normalize(texts @ params[1], dim=-1)
        loss = loss_fn(image_features, text_features, params[2].exp())
        loss.backward()
        results.append((loss.detach(), [p.grad for p in params]))
    (ours, our_grads), (theirs, their_grads) = results
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(our_grads, their_grads))
    logits = log_scale.exp() * F.normalize(images @ weight_image, dim=-1) @ F.normalize(texts @ weight_text, dim=-1).T
    by_hand = (F.cross_entropy(logits, torch.arange(N)) + F.cross_entropy(logits.T, torch.arange(N))) / 2
    assert torch.allclose(ours, by_hand, atol=1e-6)


def test_scale_gradient_is_identity_forward():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = scale_gradient(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.25, 0.25]))


def test_local_loss_without_gradient_gather_is_refused():
    with pytest.raises(UserError, match="local_loss=true needs loss.gather_with_grad=true"):
        ClipLoss(local_loss=True, gather_with_grad=False, rank=0, world_size=2)


def _worker(rank: int, world_size: int, out_dir: str) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    local = N // world_size
    results = {}
    for index, mode in enumerate(MODES):
        loss, grads = loss_and_grads(ClipLoss(rank=rank, world_size=world_size, **mode), slice(rank * local, (rank + 1) * local))
        for tensor in [loss, *grads]:  # what DDP does with gradients (and the logged loss)
            dist.all_reduce(tensor)
            tensor /= world_size
        results[index] = (loss, grads)
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "results.pt"))
    dist.destroy_process_group()


def test_two_processes_equal_one_process_in_every_mode(tmp_path):
    run_processes(_worker, 2, str(tmp_path))
    distributed = torch.load(tmp_path / "results.pt")
    single_loss, single_grads = loss_and_grads(ClipLoss(), slice(0, N))
    for index, mode in enumerate(MODES):
        loss, grads = distributed[index]
        assert torch.allclose(loss, single_loss, atol=1e-6), mode
        for ours, expected in zip(grads, single_grads):
            assert torch.allclose(ours, expected, atol=1e-6), mode
