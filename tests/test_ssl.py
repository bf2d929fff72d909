"""Self-supervised encoder: NT-Xent equals a loop reference, training is deterministic and lowers
the loss, the checkpoint loads through `build_encoder("ssl:DIR")`, `random:ssl:DIR` is the
same architecture re-initialised, and `vlbridge train ssl` runs end to end. Training runs use
a tiny backbone at 32 px so they take seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlbridge.cli import main
from vlbridge.config import from_dict
from vlbridge.errors import UserError
from vlbridge.models.ssl import SSLModelConfig, load_backbone, nt_xent_loss, read_config
from vlbridge.models.registry import build_encoder
from vlbridge.training.ssl import SSLTrainConfig, train_ssl


TINY_MODEL = {
    "timm_kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 16, 32], "stem_width": 8, "output_stride": 16},
    "image_size": 32,
    "projection_hidden": 32,
    "projection_dim": 16,
}


def tiny_config(**overrides) -> SSLTrainConfig:
    base = {"model": TINY_MODEL, "steps": 4, "batch_size": 8, "optim": {"warmup_steps": 1}, "log_every": 2, "device": "cpu"}
    return from_dict(SSLTrainConfig, {**base, **overrides})


def tiny_images(n: int = 12) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        pixels = np.full((32, 32, 3), 230, dtype=np.uint8)
        y, x = rng.integers(2, 20, size=2)
        pixels[y : y + 10, x : x + 10] = rng.integers(0, 255, size=3)
        images.append(Image.fromarray(pixels))
    return images


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """NT-Xent written out anchor by anchor, as in the SimCLR paper."""
    z = torch.cat([z1, z2]).double()
    n = len(z)
    total = 0.0
    for i in range(n):
        partner = (i + n // 2) % n
        denominator = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[partner]) / t) / denominator)
    return total / n


def test_nt_xent_equals_reference():
    torch.manual_seed(0)
    z1, z2 = F.normalize(torch.randn(5, 7), dim=-1), F.normalize(torch.randn(5, 7), dim=-1)
    assert float(nt_xent_loss(z1, z2, 0.3)) == pytest.approx(reference_nt_xent(z1, z2, 0.3), rel=1e-5)
    # perfectly matched, mutually orthogonal pairs give the minimum of the softmax problem
    eye = torch.eye(4)
    assert float(nt_xent_loss(eye, eye, 0.1)) < float(nt_xent_loss(eye, eye.roll(1, 0), 0.1))


def test_training_is_deterministic_and_checkpoint_loads_as_encoder(tmp_path):
    images = tiny_images()
    first = train_ssl(tiny_config(), tmp_path / "a", images=images)
    second = train_ssl(tiny_config(), tmp_path / "b", images=images)
    assert [s for s, _ in first.losses] == [1, 2, 3, 4]
    assert first.losses == second.losses and all(math.isfinite(loss) for _, loss in first.losses)
    backbone, config = load_backbone(first.run_dir)
    assert config.image_size == 32 and config.timm_kwargs["channels"] == [8, 16, 16, 32]
    encoder = build_encoder(f"ssl:{first.run_dir}")
    grid = build_encoder(f"ssl:{first.run_dir}:grid")
    assert encoder.encoder_id == build_encoder(f"ssl:{second.run_dir}").encoder_id  # same weights
    assert encoder.encoder_id.startswith("ssl:resnet18@")
    pixels = torch.stack([encoder.preprocess(im) for im in images[:3]])
    with torch.no_grad():
        assert torch.equal(encoder(pixels), backbone(pixels))
    assert (encoder.feature_dim, grid.num_tokens, grid.feature_dim) == (32, 4, 32)  # 32 px / 16 = 2x2
    _, training = read_config(first.run_dir)
    assert training["losses"] == [list(x) for x in first.losses] and training["config"]["steps"] == 4


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    """Batch order, augmentations (global RNG) and batch-norm statistics all replay from the checkpoint."""
    images = tiny_images()
    config = tiny_config(checkpoint_every=2, log_every=1)
    straight = train_ssl(config, tmp_path / "straight", images=images)

    class Interrupt(Exception):
        pass

    def stop_at_3(step, _loss):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_ssl(config, tmp_path / "resumed", images=images, on_step=stop_at_3)
    resumed = train_ssl(config, tmp_path / "resumed", images=images, resume="latest")
    assert resumed.start_step == 2 and resumed.losses == straight.losses[2:]
    a, _ = load_backbone(straight.run_dir)
    b, _ = load_backbone(resumed.run_dir)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_random_ssl_is_same_architecture_reinitialised(tmp_path):
    result = train_ssl(tiny_config(steps=2), tmp_path / "ssl", images=tiny_images())
    trained = build_encoder(f"ssl:{result.run_dir}")
    random_a = build_encoder(f"random:ssl:{result.run_dir}")
    random_b = build_encoder(f"random:ssl:{result.run_dir}")
    assert random_a.encoder_id == random_b.encoder_id != trained.encoder_id
    assert random_a.encoder_id.startswith("random:ssl:")
    assert [tuple(p.shape) for p in random_a.parameters()] == [tuple(p.shape) for p in trained.parameters()]
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(random_a(pixels), random_b(pixels))
        assert not torch.allclose(random_a(pixels), trained(pixels))


def test_training_lowers_the_loss(tmp_path):
    result = train_ssl(tiny_config(steps=40, log_every=1, optim={"warmup_steps": 1, "lr": 1e-2}, batch_size=12), tmp_path / "ssl", images=tiny_images(24))
    losses = [loss for _, loss in result.losses]
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.4  # measured: 2.92 -> 2.09


def test_bad_checkpoints_and_configs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a self-supervised checkpoint"):
        build_encoder(f"ssl:{tmp_path}")
    (tmp_path / "config.json").write_text('{"format": "other"}')
    with pytest.raises(UserError, match="format"):
        build_encoder(f"ssl:{tmp_path}")
    with pytest.raises(UserError, match="temperature"):
        train_ssl(tiny_config(temperature=0.0), tmp_path / "x", images=tiny_images())
    with pytest.raises(UserError, match="at least 2 images"):
        train_ssl(tiny_config(), tmp_path / "x", images=tiny_images(1))


def test_train_ssl_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "ssl", "--out", str(out), "--steps", "2", "--batch-size", "4", "--n-images", "6", "--device", "cpu",
            "model.image_size=32", "model.projection_hidden=16", "model.projection_dim=8",
            "model.timm_kwargs={layers: [1, 1, 1, 1], channels: [8, 8, 16, 16], stem_width: 8}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"--encoder ssl:{out}" in printed
    config, training = read_config(out)
    # overrides merge into the default timm_kwargs (output_stride 16 stays)
    kwargs = {"layers": [1, 1, 1, 1], "channels": [8, 8, 16, 16], "stem_width": 8, "output_stride": 16}
    assert config == SSLModelConfig(timm_kwargs=kwargs, image_size=32, projection_hidden=16, projection_dim=8)
    assert training["images"] == 6 and training["config"]["batch_size"] == 4
    assert build_encoder(f"ssl:{out}").feature_dim == 16
    assert main(["train", "ssl", "--out", str(out), "no_such_key=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


@pytest.mark.slow
def test_ssl_features_decode_colour_better_than_random_init(tmp_path):
    """A short default-architecture run (60 steps, 512 shapes images; ~1 CPU-minute) already
    makes colour linearly decodable far better than the same net at random init."""
    from sklearn.linear_model import LogisticRegression

    from vlbridge.data.features import extract_features
    from vlbridge.data.shapes import classification_records

    config = from_dict(SSLTrainConfig, {"steps": 60, "n_images": 512, "device": "cpu"})
    result = train_ssl(config, tmp_path / "ssl")
    train, test = classification_records(208, split="train", seed=0), classification_records(208, split="test", seed=1)

    def colour_probe(spec: str) -> float:
        encoder = build_encoder(spec)
        x_train = extract_features(encoder, [r.image for r in train], batch_size=64).features
        x_test = extract_features(encoder, [r.image for r in test], batch_size=64).features
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        probe = LogisticRegression(max_iter=2000, C=0.5)
        probe.fit(((x_train - mean) / std).numpy(), [r.label.split()[0] for r in train])
        return probe.score(((x_test - mean) / std).numpy(), [r.label.split()[0] for r in test])

    trained, random = colour_probe(f"ssl:{result.run_dir}"), colour_probe(f"random:ssl:{result.run_dir}")
    assert trained > random + 0.1, (trained, random)
