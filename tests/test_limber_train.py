"""Tests for `train_limber` / `vlbridge train limber`: what trains, exact resume, tuned encoder, CLI.

A tiny random Llama (+ BPE tokenizer) and timm's test_resnet at 32 px are saved to disk and
loaded through the real loaders; data are 16 shapes-world images; features go through the
real FeatureStore (one cache per module, so they are extracted once).
"""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from helpers.limber_train_helpers import make_tiny_encoder, make_tiny_lm
from safetensors.torch import load_file

from vlbridge.cli import main
from vlbridge.errors import UserError
from vlbridge.models.encoders import module_fingerprint
from vlbridge.models.limber import TUNED_ENCODER_FILE, Limber, load_trained_limber
from vlbridge.models.lm import FrozenLM
from vlbridge.models.registry import build_encoder
from vlbridge.runtime import DistEnv
from vlbridge.training import limber as limber_train
from vlbridge.training.limber import LimberDataConfig, LimberOptimConfig, LimberTrainConfig, train_limber


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("limber_train")
    lm_dir = make_tiny_lm(root / "lm")
    encoder_spec = make_tiny_encoder(root / "encoder") + ":32px"
    return {"lm": str(lm_dir), "encoder": encoder_spec, "cache": str(root / "features")}


def tiny_config(assets, **changes) -> LimberTrainConfig:
    config = LimberTrainConfig(
        encoder=assets["encoder"],
        lm=assets["lm"],
        batch_size=4,
        steps=6,
        checkpoint_every=2,
        log_every=1,
        data=LimberDataConfig(n=16, image_size=32, feature_cache=assets["cache"]),
        optim=LimberOptimConfig(warmup_steps=2),
    )
    return dataclasses.replace(config, **changes)


def projector_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.projector.state_dict().items()}


def test_only_the_projector_trains(assets, tmp_path):
    config = tiny_config(assets)
    initial = limber_train.build_limber(config, torch.device("cpu"))
    result = train_limber(config, tmp_path / "run")
    lm_reference = FrozenLM.from_pretrained(assets["lm"]).parameter_hash()
    assert result.model.lm.parameter_hash() == lm_reference
    assert module_fingerprint([result.model.encoder]) == module_fingerprint([initial.encoder])
    trained = projector_state(result.model)
    assert set(trained) == {"proj.weight", "proj.bias"}
    assert all(not torch.equal(trained[k], v) for k, v in projector_state(initial).items())
    assert result.steps == 6 and [s for s, _ in result.losses] == [1, 2, 3, 4, 5, 6]
    # the run directory holds everything to reload and resume
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "latest").is_file()
    saved = load_file(str(run / "model" / "projector.safetensors"))
    assert all(torch.equal(saved[k], trained[k]) for k in trained)
    reloaded = load_trained_limber(run)
    assert all(torch.equal(v, trained[k]) for k, v in projector_state(reloaded).items())
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[0] == "step,loss,lr,samples_per_s"
    lrs = [float(row.split(",")[2]) for row in rows[1:]]
    assert lrs[:2] == pytest.approx([4e-4, 8e-4])  # linear warmup over 2 steps, then cosine decay
    assert lrs[2] == lrs[1] and all(a > b for a, b in zip(lrs[2:], lrs[3:]))
    assert load_trained_limber(run).config.lm == assets["lm"]


def test_the_trainer_computes_its_loss_with_limber_forward(assets, tmp_path, monkeypatch):
    calls = []
    real_forward = Limber.forward

    def recording(self, **kwargs):
        output = real_forward(self, **kwargs)
        calls.append((sorted(k for k, v in kwargs.items() if v is not None), output.loss_sum.detach(), output.num_tokens))
        return output

    monkeypatch.setattr(Limber, "forward", recording)
    result = train_limber(tiny_config(assets, steps=2), tmp_path / "run")
    assert [keys for keys, _, _ in calls] == [["image_features", "input_ids"]] * 2  # one call per step, cached features
    assert [loss for _, loss in result.losses] == [float(loss_sum / count) for _, loss_sum, count in calls]


@pytest.mark.parametrize("accum", [2, 3])
def test_gradient_accumulation_gives_the_unsplit_update(assets, tmp_path, accum, monkeypatch):
    whole = train_limber(tiny_config(assets, steps=3), tmp_path / "whole")
    sizes = []
    real_forward = Limber.forward

    def counting(self, **kwargs):
        sizes.append(len(kwargs["input_ids"]))
        return real_forward(self, **kwargs)

    monkeypatch.setattr(Limber, "forward", counting)
    split = train_limber(tiny_config(assets, steps=3, grad_accum_steps=accum), tmp_path / f"split{accum}")
    assert sizes == {2: [2, 2], 3: [1, 2, 1]}[accum] * 3  # batch 4 in `accum` micro-batches, every step
    for (step_a, loss_a), (step_b, loss_b) in zip(whole.losses, split.losses, strict=True):
        assert step_a == step_b and loss_a == pytest.approx(loss_b, rel=1e-6)
    for key, value in projector_state(whole.model).items():
        torch.testing.assert_close(projector_state(split.model)[key], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(projector_state(whole.model)["proj.weight"],
                           projector_state(limber_train.build_limber(tiny_config(assets), torch.device("cpu")))["proj.weight"])


def test_split_batch_cuts_every_field_into_contiguous_non_empty_parts():
    batch = {"input_ids": [[1], [2], [3], [4], [5]], "id": list("abcde"), "image_features": torch.arange(5.0)[:, None]}
    parts = limber_train.split_batch(batch, 2)
    assert [p["id"] for p in parts] == [["a", "b"], ["c", "d", "e"]]
    assert torch.equal(torch.cat([p["image_features"] for p in parts]), batch["image_features"])
    assert [p["input_ids"] for p in limber_train.split_batch(batch, 8)] == [[[1]], [[2]], [[3]], [[4]], [[5]]]
    (whole,) = limber_train.split_batch(batch, 1)
    assert whole["id"] == batch["id"] and torch.equal(whole["image_features"], batch["image_features"])


def test_grad_accum_steps_below_one_is_a_user_error(assets, tmp_path):
    with pytest.raises(UserError, match="grad_accum_steps must be >= 1"):
        train_limber(tiny_config(assets, grad_accum_steps=0), tmp_path / "run")


def test_interrupted_and_resumed_equals_uninterrupted(assets, tmp_path):
    config = tiny_config(assets, dropout=0.2)  # dropout: the RNG must be replayed too
    straight = train_limber(config, tmp_path / "straight")

    class Interrupt(Exception):
        pass

    def stop_at_5(step, _loss):
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_limber(config, tmp_path / "resumed", on_step=stop_at_5)
    resumed = train_limber(config, tmp_path / "resumed", resume="latest")
    assert [s for s, _ in resumed.losses] == [5, 6]  # restarted from the step-4 checkpoint
    assert resumed.losses == straight.losses[4:]
    for key, value in projector_state(straight.model).items():
        assert torch.equal(projector_state(resumed.model)[key], value)
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_a_run_saved_with_the_old_key_names_still_resumes(assets, tmp_path):
    config = tiny_config(assets)
    straight = train_limber(config, tmp_path / "straight")

    def stop_at_5(step, _loss):
        if step == 5:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        train_limber(config, tmp_path / "old", on_step=stop_at_5)
    path = tmp_path / "old" / "checkpoints" / "step-00000004.pt"
    saved = torch.load(path, weights_only=False)
    old = saved["config"]  # rewrite it as the version before the renames saved it
    old["max_steps"], old["keep_last"] = old.pop("steps"), old.pop("keep_checkpoints")
    old["optim"]["grad_clip"] = old["optim"].pop("grad_clip_norm")
    torch.save(saved, path)
    resumed = train_limber(config, tmp_path / "old", resume="latest")
    assert resumed.losses == straight.losses[4:]


def test_resume_with_a_different_config_is_refused(assets, tmp_path):
    train_limber(tiny_config(assets, steps=2), tmp_path / "run")
    with pytest.raises(UserError, match="optim.lr: checkpoint 0.0008, now 0.001"):
        train_limber(tiny_config(assets, steps=2, optim=LimberOptimConfig(lr=1e-3)), tmp_path / "run", resume="latest")
    with pytest.raises(UserError, match="no checkpoint '7'"):
        train_limber(tiny_config(assets, steps=2), tmp_path / "run", resume="7")


def test_tuned_encoder_changes_and_is_saved(assets, tmp_path):
    config = tiny_config(assets, tune_encoder=True, steps=2, optim=LimberOptimConfig(warmup_steps=0, encoder_lr=1e-2))
    before = build_encoder(assets["encoder"])
    result = train_limber(config, tmp_path / "run")
    tuned = result.model.encoder
    changed = [k for k, v in before.state_dict().items() if not torch.equal(v, tuned.state_dict()[k].cpu())]
    assert changed and any("weight" in k for k in changed)
    assert result.model.lm.parameter_hash() == FrozenLM.from_pretrained(assets["lm"]).parameter_hash()
    saved = tmp_path / "run" / "model" / TUNED_ENCODER_FILE
    assert saved.is_file()
    reloaded = load_trained_limber(tmp_path / "run")
    for key, value in tuned.state_dict().items():
        assert torch.equal(reloaded.encoder.state_dict()[key], value)
    from vlbridge.commands.caption import load_model  # what `vlbridge caption` / `vlbridge vqa` load

    from_cli = load_model(SimpleNamespace(model=str(tmp_path / "run"), device="cpu"))
    for key, value in tuned.state_dict().items():
        assert torch.equal(from_cli.encoder.state_dict()[key], value)


def test_cli_trains_and_reports(assets, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", "limber", "--encoder", assets["encoder"], "--lm", assets["lm"], "--data", "shapes",
            "--out", str(out), "--steps", "2", "batch_size=4", "data.n=8", "data.image_size=32",
            f"data.feature_cache={assets['cache']}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "trained 2 steps" in printed and str(out / "model") in printed
    assert (out / "model" / "projector.safetensors").is_file()
    assert main(argv + ["--resume", "latest"]) == 0  # already finished: nothing left to do
    assert main(argv + ["optim.lr=0.1", "--resume", "latest"]) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_cli_errors_are_one_line(assets, tmp_path, capsys):
    assert main(["train", "limber", "--out", str(tmp_path)]) == 2
    assert "no image encoder given" in capsys.readouterr().err
    assert main(["train", "limber", "--encoder", "nope:x", "--out", str(tmp_path), "--lm", str(tmp_path)]) == 2
    assert "unknown encoder" in capsys.readouterr().err
    steps_zero = ["train", "limber", "--encoder", assets["encoder"], "--out", str(tmp_path), "--steps", "0"]
    assert main(steps_zero) == 2  # steps=0 in a config means "by epochs"; --steps 0 must not quietly do that
    assert "--steps must be a whole number from 1" in capsys.readouterr().err
    assert main(["train", "limber", "--encoder", assets["encoder"], "--out", str(tmp_path), "steps=0", "epochs=0"]) == 2
    assert "nothing to train: steps is 0 (size the run by epochs) and epochs is 0" in capsys.readouterr().err


def test_a_non_finite_loss_stops_training_with_a_clear_error(assets, tmp_path, monkeypatch):
    from vlbridge.models import limber as limber_model

    real = limber_model.shifted_token_loss

    def poisoned(logits, labels, per_sequence=False):
        loss_sum, count = real(logits, labels, per_sequence)
        return loss_sum * float("nan"), count

    monkeypatch.setattr(limber_model, "shifted_token_loss", poisoned)
    with pytest.raises(UserError, match="loss became nan at step 1; try a lower optim.lr"):
        train_limber(tiny_config(assets, steps=2), tmp_path / "run")


def test_projector_starts_at_the_word_embedding_scale(assets):
    from vlbridge.training.projector_init import init_projector

    config = tiny_config(assets)
    model = limber_train.build_limber(config, torch.device("cpu"))
    data = limber_train.prepare_data(config, model, DistEnv())
    default_weight = model.projector.proj.weight.detach().clone()
    init_projector(model, data.features, data.caption_ids, dataclasses.replace(config, projector_init="default"))
    assert torch.equal(model.projector.proj.weight, default_weight)  # "default": nn.Linear's init kept
    init_projector(model, data.features, data.caption_ids, config)
    word_std = float(model.lm.model.get_input_embeddings().weight.std())
    with torch.no_grad():
        prefix = model.projector(data.features)  # (N, k, H)
    assert abs(float(prefix.std()) / word_std - 1) < 0.25
    assert torch.count_nonzero(model.projector.proj.bias) == 0
    again = limber_train.build_limber(config, torch.device("cpu"))
    init_projector(again, data.features, data.caption_ids, config)
    assert torch.equal(again.projector.proj.weight, model.projector.proj.weight)  # seeded
    with pytest.raises(UserError, match="projector_init must be one of"):
        init_projector(model, data.features, data.caption_ids, dataclasses.replace(config, projector_init="xavier"))


def test_caption_ridge_init_is_the_least_squares_map_to_caption_token_embeddings():
    from types import SimpleNamespace

    from vlbridge.models.projector import LinearProjector
    from vlbridge.training.projector_init import caption_targets, init_projector

    generator = torch.Generator().manual_seed(0)
    words = torch.randn(20, 6, generator=generator)  # (V, H) word embeddings
    caption_ids = [[[i % 20, (3 * i) % 20, 7]] for i in range(40)]
    targets = caption_targets(caption_ids, words, k=2)  # (N, 12)
    assert torch.equal(targets[1], torch.cat([words[1], words[3]]))
    assert torch.equal(caption_targets([[[5]]], words, k=2)[0], torch.cat([words[5], words[5]]))  # last repeated
    features = torch.randn(40, 5, generator=generator)  # (N, D)
    embedding = torch.nn.Embedding.from_pretrained(words)
    lm = SimpleNamespace(model=SimpleNamespace(get_input_embeddings=lambda: embedding))
    model = SimpleNamespace(lm=lm, projector=LinearProjector(5, 6, num_prefix_tokens=2))
    config = SimpleNamespace(projector_init="caption-ridge", ridge=1e-9, seed=0)
    init_projector(model, features, caption_ids, config)
    with torch.no_grad():
        fitted = model.projector(features).reshape(40, -1)  # (N, k*H)
    with_intercept = torch.cat([features, torch.ones(40, 1)], dim=1)  # (N, D+1)
    best = with_intercept @ torch.linalg.lstsq(with_intercept.double(), targets.double()).solution.float()
    assert torch.allclose(fitted, best, atol=1e-4)  # ordinary least squares with an intercept (ridge -> 0)
