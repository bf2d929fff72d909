"""`vlbridge train clip` end to end: CLI, resume exactness, 2-process DDP = 1 process, accumulation,
gradient checkpointing, LiT, bad samples (micro models on 32 px shapes-world images, CPU)."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml
from helpers.clip_fixtures import bert_dir, micro_config, records_with_bad, run_processes
from safetensors.torch import load_file

from vlbridge.cli import main
from vlbridge.config import to_dict
from vlbridge.models.clip_loading import load_clip
from vlbridge.training.clip import ClipTrainConfig, train_clip

FAST = ["model.arch=vl-micro-vit", "data.shapes_n=32", "data.shapes_image_size=32", "data.twemoji=false",
        "data.openclipart=false", "eval.n=52", "steps=3", "batch_size=8", "log_every=1", "device=cpu"]


def weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def metric_rows(run_dir):
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def losses(run_dir):
    return [float(row["loss"]) for row in metric_rows(run_dir) if row["loss"]]


def assert_weights_close(a, b, tol):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= tol, worst


def test_cli_trains_saves_and_the_run_dir_loads(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["-q", "train", "clip", "--out", str(run_dir), *FAST, "optim.lr=2e-3", "checkpoint_every=2"]) == 0
    printed = capsys.readouterr().out
    assert "trained 3 steps" in printed and "zero-shot top-1" in printed
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 2e-3 and saved["steps"] == 3 and saved["model"]["arch"] == "vl-micro-vit"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt")) == ["step-00000002.pt", "step-00000003.pt"]
    rows = metric_rows(run_dir)
    assert {"step", "loss", "logit_scale", "lr", "samples_per_s", "zeroshot_top1"} <= set(rows[0])
    assert [row["step"] for row in rows if row["loss"]] == ["1", "2", "3"]
    assert any((run_dir / "tensorboard").iterdir())
    bundle = load_clip(str(run_dir))
    state = {k: v for k, v in bundle.model.state_dict().items()}
    assert_weights_close({k: state[k] for k in weights(run_dir)}, weights(run_dir), 0.0)
    from_checkpoint = load_clip(str(run_dir / "checkpoints" / "step-00000003.pt"))
    assert_weights_close({k: v for k, v in from_checkpoint.model.state_dict().items() if k in state}, state, 0.0)


def test_cli_bad_keys_and_files_are_one_line_errors(tmp_path, capsys):
    cases = [
        (["optim.nope=1"], "unknown config key optim.'nope'"),
        (["grad_accum_steps=3"], "batch_size (8) must be a positive multiple"),
        (["optim.accum_steps=3"], "batch_size (8) must be a positive multiple"),  # the old name still works
        (["optim.accum_steps=2", "grad_accum_steps=2"], "both given; keep only grad_accum_steps"),
        (["optim.grad_clip_norm=0"], "optim.grad_clip_norm must be > 0, or null for no clipping"),
        (["log_every=0"], "log_every must be >= 1, got 0"),
        (["model.arch=no-such"], "unknown CLIP architecture 'no-such'"),
        (["--config", str(tmp_path / "missing.yaml")], "does not exist"),
    ]
    for extra, message in cases:
        assert main(["-q", "train", "clip", "--out", str(tmp_path / "r"), *FAST, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("vlbridge: error:") and message in err and "\n" not in err, err


class Interrupt(Exception):
    """Stands in for a kill: raised between steps, after the last checkpoint."""


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    cfg = micro_config(steps=6, checkpoint_every=2)  # augmentation, captions sampling, warmup + cosine all on

    def stop_at_5(step, _loss):
        if step == 5:
            raise Interrupt

    train_clip(cfg, tmp_path / "full")
    with pytest.raises(Interrupt):
        train_clip(cfg, tmp_path / "cut", on_step=stop_at_5)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    result = train_clip(cfg, tmp_path / "cut", resume="latest")
    assert result.start_step == 4 and [s for s, _ in result.losses] == [5, 6]
    full, cut = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert losses(tmp_path / "full") == losses(tmp_path / "cut")  # rows 5 of the cut run were dropped and redone


def _ddp_worker(rank, world_size, cfg_dict, run_dir):
    from vlbridge.config import from_dict

    train_clip(from_dict(ClipTrainConfig, cfg_dict), run_dir)


def test_two_processes_with_accumulation_equal_one_process(tmp_path):
    single = micro_config(steps=3)
    train_clip(single, tmp_path / "one")
    double = micro_config(steps=3, grad_accum_steps=2)  # 2 ranks x 2 micro-batches x 2 samples
    run_processes(_ddp_worker, 2, to_dict(double), str(tmp_path / "two"))
    assert_weights_close(weights(tmp_path / "one"), weights(tmp_path / "two"), 1e-5)
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), abs=1e-5)


@pytest.mark.parametrize("change", [{"grad_accum_steps": 4}, {"model": {"grad_checkpointing": True}}])
def test_accumulation_and_grad_checkpointing_keep_the_update(tmp_path, change):
    train_clip(micro_config(steps=2), tmp_path / "plain")
    train_clip(micro_config(steps=2, **change), tmp_path / "changed")
    assert_weights_close(weights(tmp_path / "plain"), weights(tmp_path / "changed"), 1e-5)


def test_bad_samples_are_skipped_counted_and_replaced(tmp_path, monkeypatch):
    records = records_with_bad(10, tmp_path / "bad.png")
    monkeypatch.setattr("vlbridge.training.clip.load_source", lambda cfg: records)
    result = train_clip(micro_config(steps=3, batch_size=6), tmp_path / "run")
    assert sum(result.skipped.values()) >= 2  # both bad records come up within 3 x 6 samples
    assert any("missing image file" in reason for reason in result.skipped)


def test_lit_training_runs_and_loads(tmp_path):
    text_dir = bert_dir(tmp_path / "bert")
    cfg = micro_config(steps=2, model={"lit": True, "lit_text_dir": str(text_dir), "lit_context_length": 12})
    train_clip(cfg, tmp_path / "lit")
    assert (tmp_path / "lit" / "lit_config.json").is_file()
    bundle = load_clip(str(tmp_path / "lit"))
    assert type(bundle.model).__name__ == "LockedTextCLIP"
    assert bundle.embed_texts(["a red circle"]).shape == (1, 32)


def test_webdataset_shards_stream_and_resume_exactly(tmp_path):
    from vlbridge.data import shapes
    from vlbridge.data.formats import export_records

    summary = export_records(shapes.image_text_records(20, split="train", image_size=32), tmp_path / "shards", "wds",
                             shard_size=8, progress=False)
    cfg = micro_config(steps=6, checkpoint_every=2, data={"source": summary.read_back, "shuffle_buffer": 6})

    def stop_at_3(step, _loss):
        if step == 3:
            raise Interrupt

    train_clip(cfg, tmp_path / "full")  # 6 x 8 samples: more than two passes over the 20 records
    with pytest.raises(Interrupt):
        train_clip(cfg, tmp_path / "cut", on_step=stop_at_3)
    assert train_clip(cfg, tmp_path / "cut", resume="latest").start_step == 2
    full, cut = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_zero_shot_probe_equals_the_evaluation_module():
    from vlbridge.data import shapes
    from vlbridge.evaluation.zero_shot import build_classifier, zero_shot_scores
    from vlbridge.models.clip import create_clip
    from vlbridge.training.clip import ZeroShotProbe

    bundle = create_clip("vl-micro-rn")
    records = shapes.classification_records(104, split="val", seed=1, image_size=32)
    names, templates = shapes.class_names(), ["a photo of a {}.", "a drawing of a {}."]
    images, labels = [r.image for r in records], [r.label for r in records]
    probe = ZeroShotProbe(images, labels, names, templates, bundle.preprocess, bundle.tokenizer)
    classifier = build_classifier(bundle, names, templates)
    expected = zero_shot_scores(bundle.embed_images(images), classifier, torch.tensor([names.index(x) for x in labels]))
    assert probe.accuracy(bundle.model, torch.device("cpu")) == pytest.approx(expected["top1"])
