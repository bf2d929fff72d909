"""Large-LM options of LiMBeR training: activation checkpointing on the frozen LM gives the
projector exactly the gradient it gets without (while saving fewer activations for backward),
and an LM placed with `device_map` computes the same loss as one moved whole to the device."""

from __future__ import annotations

import pytest
import torch
from helpers.limber_train_helpers import make_tiny_encoder, make_tiny_lm

from vlbridge.models.lm import FrozenLM
from vlbridge.training.limber import LimberDataConfig, LimberTrainConfig, build_limber


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_ckpt")
    return {"lm": str(make_tiny_lm(root / "lm")), "encoder": make_tiny_encoder(root / "encoder") + ":32px"}


def saved_bytes_and_grads(model, features, captions):
    """Bytes autograd saved for backward during the forward, and the projector's gradients."""
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    model.projector.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(image_features=features, input_ids=captions)
    output.loss.backward()
    return saved[0], {name: p.grad.clone() for name, p in model.projector.named_parameters()}


def test_checkpointing_keeps_the_projector_gradient_and_saves_less(assets):
    config = LimberTrainConfig(encoder=assets["encoder"], lm=assets["lm"], data=LimberDataConfig())
    plain = build_limber(config, torch.device("cpu"))
    checkpointed = build_limber(LimberTrainConfig(**{**config.__dict__, "lm_activation_checkpointing": True}),
                                torch.device("cpu"))
    assert torch.equal(plain.projector.proj.weight, checkpointed.projector.proj.weight)  # same seeded start
    torch.manual_seed(0)
    features = torch.randn(3, plain.projector.proj.in_features)  # (B, D)
    captions = plain.lm.tokenize(["a red circle", "two blue squares on the left", "a star"])
    plain_saved, plain_grads = saved_bytes_and_grads(plain, features, captions)
    ckpt_saved, ckpt_grads = saved_bytes_and_grads(checkpointed, features, captions)
    for name, grad in plain_grads.items():
        assert torch.equal(ckpt_grads[name], grad), name
        assert grad.abs().sum() > 0
    assert ckpt_saved < 0.6 * plain_saved  # layer activations are recomputed, not kept
    assert all(not p.requires_grad and p.grad is None for p in checkpointed.lm.parameters())  # LM stays frozen
    assert not checkpointed.lm.model.training  # the HF model stays in eval mode (no dropout)


def test_device_map_placement_computes_the_same_loss(assets):
    whole = FrozenLM.from_pretrained(assets["lm"])
    placed = FrozenLM.from_pretrained(assets["lm"], device_map="auto")  # CPU only here: everything on "cpu"
    ids = torch.tensor([whole.tokenize(["a red circle"])[0]])
    embeds = whole.embed(ids)
    with torch.no_grad():
        a = whole(embeds, None, labels=ids).loss
        b = placed(embeds, None, labels=ids).loss
    assert torch.equal(a, b)
