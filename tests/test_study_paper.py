"""Tests of `--preset paper`: the recipe, `check_paths`, the stand-ins, and the end-to-end dry run.

The stand-ins are built once per module (about 10 s on a CPU) and read back through the real
readers and loaders, compared where possible with what wrote them. The full dry run (every
encoder, captioning, VQA, report) is the one slow test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from vlbridge.cli import main
from vlbridge.config import merge
from vlbridge.data.records import TarMember
from vlbridge.errors import UserError
from vlbridge.study import paper, presets, standins
from vlbridge.study.config import PaperPaths, StudyConfig, apply_preset, load_study_config
from vlbridge.study.presets import PRESETS

USED_PATHS = {  # every PaperPaths field the recipe reads (coco_annotations is not: Karpathy has the captions)
    "cc3m_shards", "coco_karpathy", "coco_images", "nocaps_json", "nocaps_images", "vqav2_questions",
    "vqav2_annotations", "vqav2_images", "lm", "clip_rn50x16", "clip_scorer", "beit_large", "beit_large_ft22k",
    "nf_resnet50",
}


# ------------------------------------------------------------------------------------ the recipe
def test_paper_preset_is_the_limber_recipe():
    config = load_study_config("paper")
    assert (config.preset, config.train_encoders) == ("paper", False)
    assert config.clip_table.datasets == []
    assert config.limber.encoders == {
        "clip": "clip-grid:{paper.clip_rn50x16}",
        "supervised": "timm:nf_resnet50@{paper.nf_resnet50}:384px",
        "self-supervised": "hf:{paper.beit_large}:grid",
        "random-clip": "random:clip-grid:{paper.clip_rn50x16}",
        "random-supervised": "random:timm:nf_resnet50:384px",
        "random-self-supervised": "random:hf:{paper.beit_large}:grid",  # configs/beit_random_linear.yml
        "beit-ft22k": "hf:{paper.beit_large_ft22k}:grid",  # "BEIT FT.": a frozen encoder, configs/beit_ft_linear.yml
    }
    train = config.limber.train
    assert (train.lm, train.lm_dtype, train.steps, train.batch_size, train.num_prefix_tokens, train.dropout) == (
        "{paper.lm}", "bfloat16", 15000, 256, 2, 0.1)
    assert (train.data.dataset, train.data.n) == ("wds:{paper.cc3m_shards}", 0)
    optim = train.optim
    assert (optim.lr, optim.beta1, optim.beta2, optim.weight_decay, optim.grad_clip_norm, optim.warmup_steps) == (
        8e-4, 0.9, 0.95, 0.0, 1.0, 100)
    assert optim.min_lr_ratio == pytest.approx(1 - 15000 / 300000)  # the code's linear decay, at step 15k
    assert list(config.limber.caption_sets) == ["coco", "nocaps"]  # only these, COCO first (the headline)
    assert config.limber.caption_sets["coco"] == "coco:{paper.coco_karpathy}?images={paper.coco_images}&split=test"
    assert config.limber.vqa_queries == presets.VQAV2 + "&n=5000" and config.limber.vqa_support == presets.VQAV2
    assert config.limber.twins == {"clip": "random-clip", "supervised": "random-supervised",
                                   "self-supervised": "random-self-supervised"}
    assert config.limber.ladder == ["self-supervised", "supervised", "clip"]
    assert config.limber.clip_scorer == "{paper.clip_scorer}"
    assert config.limber.shots == [0, 1, 2, 4]
    # the authors' VQA protocol (jmerullo/limber issue #2): "Q: ... A:" prompt, answers cut as MAGMA's
    assert (config.limber.vqa_template, config.limber.vqa_truncate_answers) == ("Q: {question} A:", True)


@pytest.mark.parametrize("name", ["quick", "default"])
def test_apply_preset_equals_merge_when_no_mapping_loses_keys(name):
    reference = merge(StudyConfig(), PRESETS[name])
    assert apply_preset(StudyConfig(), PRESETS[name]) == reference


def test_apply_preset_replaces_mapping_fields_whole():
    tree = {"limber": {"caption_sets": {"only": "shapes?n=4"}, "train": {"steps": 3}}}
    config = apply_preset(StudyConfig(), tree)
    assert config.limber.caption_sets == {"only": "shapes?n=4"}
    assert config.limber.train.steps == 3
    assert apply_preset(StudyConfig(), {"limber": {"train": {"max_steps": 3}}}).limber.train.steps == 3  # an old key name
    assert config.limber.train.batch_size == StudyConfig().limber.train.batch_size  # dataclasses still merge


def test_referenced_paths_are_the_ones_the_recipe_reads():
    found = paper.referenced_paths(load_study_config("paper"))
    assert set(found) == USED_PATHS
    assert found["clip_rn50x16"] == ["limber.encoders.clip", "limber.encoders.random-clip"]
    assert sorted(found["vqav2_images"]) == ["limber.vqa_queries", "limber.vqa_support"]


# ------------------------------------------------------------------------------------ check_paths
def test_check_paths_lists_every_empty_path_in_one_line():
    with pytest.raises(UserError) as err:
        paper.check_paths(load_study_config("paper"))
    message = str(err.value)
    assert "\n" not in message
    assert f"cannot find {len(USED_PATHS)} of its local files" in message
    for field_name in USED_PATHS:
        assert f"paper.{field_name} (" in message
    assert "paper.coco_annotations" not in message
    assert "paper.lm (GPT-J 6B HF directory, read by limber.train.lm) is empty" in message
    assert "--config FILE" in message and "paper: {lm:" in message


def real_paths(root: Path) -> PaperPaths:
    """PaperPaths whose every used entry exists (empty files and folders of the right kind)."""
    values = {}
    root.mkdir(parents=True, exist_ok=True)
    for field_name, (kind, _) in paper.PATH_KINDS.items():
        path = root / field_name
        if kind == "dir":
            path.mkdir(parents=True)
        elif kind == "file":
            path.write_bytes(b"")
        else:
            path.mkdir()
            for shard in ("000000.tar", "000001.tar"):
                (path / shard).write_bytes(b"")
            path = path / "{000000..000001}.tar"
        values[field_name] = str(path)
    return PaperPaths(**values)


def test_check_paths_accepts_existing_paths_and_names_each_missing_one(tmp_path):
    paths = real_paths(tmp_path)
    config = merge(load_study_config("paper"), {"paper": vars(paths)})
    paper.check_paths(config)  # all there: no error
    (tmp_path / "cc3m_shards" / "000001.tar").unlink()
    broken = {"lm": str(tmp_path / "no-such-dir"), "coco_images": paths.coco_karpathy,
              "clip_scorer": str(tmp_path / "lm")}
    with pytest.raises(UserError) as err:
        paper.check_paths(merge(config, {"paper": broken}))
    message = str(err.value)
    assert "cannot find 4 of its local files" in message
    lm = "paper.lm (GPT-J 6B HF directory, read by limber.train.lm)"
    assert f"{lm} = '{tmp_path / 'no-such-dir'}' does not exist" in message
    images = "paper.coco_images (COCO val2014 image folder, read by limber.likelihood_set and 1 more)"
    assert f"{images} = '{paths.coco_karpathy}' is not a directory" in message
    scorer = "paper.clip_scorer (OpenAI ViT-B-32.pt, read by limber.clip_scorer)"
    assert f"{scorer} = '{tmp_path / 'lm'}' is not a file" in message
    shards = "paper.cc3m_shards (CC3M webdataset shards, read by limber.train.data.dataset)"
    assert f"{shards} = '{paths.cc3m_shards}': 1 of 2 shards missing" in message


def test_check_paths_names_unknown_placeholders(tmp_path):
    config = merge(load_study_config("paper"), {"paper": vars(real_paths(tmp_path))})
    config = merge(config, {"limber": {"caption_sets": {"coco": "coco:{paper.coco_karpaty}"}}})
    with pytest.raises(UserError, match=r"caption_sets.coco names \{paper.coco_karpaty\}, which is not a paper path"):
        paper.check_paths(config)


def test_cli_paper_preset_without_paths_exits_2_with_one_line(tmp_path, capsys):
    assert main(["study", "--preset", "paper", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlbridge: error: the paper preset cannot find 14 of its local files")
    assert "\n" not in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ dry-run config
def test_dry_run_config_layers_user_file_standins_sizes_then_overrides(tmp_path):
    paths_file = paper.write_paths_config(real_paths(tmp_path / "p"), tmp_path / "paths.yaml")
    user_file = tmp_path / "mine.yaml"
    user_file.write_text(yaml.safe_dump({"limber": {"likelihood_set": "coco:x.json", "train": {"max_steps": 20000}},  # old key name
                                         "paper": {"lm": "/models/gpt-j"}}))
    config = paper.dry_run_config(paths_file, tmp_path / "out", str(user_file), ["limber.train.batch_size=2"])
    assert config.paper.lm == str(tmp_path / "p" / "lm")  # stand-ins replace the user's paths
    assert config.limber.train.steps == 4 and config.limber.likelihood_set.endswith("&n=8")  # tiny sizes win
    assert config.limber.train.batch_size == 2  # key=value overrides come last
    assert config.cache_dir == str(tmp_path / "out" / "cache")
    assert config.limber.encoders["supervised"] == "timm:nf_resnet50@{paper.nf_resnet50}:64px"
    assert config.limber.encoders["random-supervised"] == "random:timm:nf_resnet50:64px"
    assert config.limber.encoders["clip"] == "clip-grid:{paper.clip_rn50x16}"
    if not torch.cuda.is_available():
        assert config.limber.train.lm_dtype == "float32"


def test_missing_results_names_what_a_run_left_out(tmp_path):
    config = load_study_config("paper")
    entry = {"coco": {}, "nocaps": {"by_domain": {d: {} for d in ("in", "near", "out", "entire")}}}
    shots = {"0": 0.0, "1": 0.0, "2": 0.0, "4": 0.0}
    results = {"captioning": {k: entry for k in config.limber.encoders},
               "likelihood": {k: {} for k in config.limber.encoders},
               "findings": [{"id": c, "effect": 0.1} for c in ("C1", "C2", "C3", "C4", "C5")],
               "vqa": {**{k: shots for k in config.limber.encoders}, "blind": {"0": 0.0}}}
    for name in ("results.json", "report.md", "report.html"):
        (tmp_path / name).write_text("x")
    assert paper.missing_results(results, config, tmp_path) == ["vqa[blind][1]", "vqa[blind][2]", "vqa[blind][4]"]
    results["captioning"]["clip"] = {"coco": {}, "nocaps": {"by_domain": {"in": {}}}}
    results["findings"][3]["effect"] = None
    (tmp_path / "report.html").unlink()
    assert paper.missing_results(results, config, tmp_path) == [
        "report.html", "captioning[clip].nocaps.by_domain in/near/out/entire", "findings C4",
        "vqa[blind][1]", "vqa[blind][2]", "vqa[blind][4]"]


# ------------------------------------------------------------------------------------ stand-ins
@pytest.fixture(scope="module")
def standin_paths(tmp_path_factory) -> PaperPaths:
    return standins.build_standins(tmp_path_factory.mktemp("paper") / "standins")


def test_standin_data_reads_back_through_the_real_readers(standin_paths):
    from vlbridge.data.formats import load_image_text, load_vqa
    from vlbridge.data.records import open_image

    p = standin_paths
    karpathy = json.loads(Path(p.coco_karpathy).read_text())["images"]
    assert {entry["split"] for entry in karpathy} == {"test", "val", "restval", "train"}
    coco = load_image_text(f"coco:{p.coco_karpathy}?images={p.coco_images}&split=test")
    assert [r.id for r in coco] == [str(standins.COCO_TEST_ID0 + i) for i in range(standins.N_COCO_TEST)]
    assert all(r.split == "test" and len(r.captions) == 5 for r in coco)
    assert open_image(coco[0].image).size == standins.IMAGE_SIZE
    nocaps = load_image_text(f"nocaps:{p.nocaps_json}?images={p.nocaps_images}")
    assert [r.domain for r in nocaps] == ["in", "near", "out"] * (standins.N_NOCAPS // 3)
    assert all(len(r.captions) == 6 for r in nocaps)
    vqa = load_vqa(f"vqav2:{p.vqav2_questions}?annotations={p.vqav2_annotations}&images={p.vqav2_images}")
    assert len({r.image_id for r in vqa}) == standins.N_VQA_IMAGES
    assert len({r.question_id for r in vqa}) == len(vqa) > standins.N_VQA_IMAGES
    assert all(len(r.answers) == 10 and r.answer_type in ("yes/no", "number", "other") for r in vqa)
    assert {r.answer_type for r in vqa} == {"yes/no", "number", "other"}
    assert all(Path(r.image).name == f"COCO_val2014_{int(r.image_id):012d}.jpg" for r in vqa)
    cc3m = list(load_image_text(f"wds:{p.cc3m_shards}"))
    assert len(cc3m) == standins.N_CC3M and p.cc3m_shards.endswith("{000000..000001}.tar")
    assert all(isinstance(r.image, TarMember) for r in cc3m)  # local shards are read lazily
    assert all(len(r.captions) == 1 and r.split is None and r.image.read_bytes()[:2] == b"\xff\xd8" for r in cc3m)  # JPEG


def test_standin_clips_load_as_openai_files_and_match_their_archives(standin_paths):
    from vlbridge.models.clip_loading import load_clip
    from vlbridge.models.registry import build_encoder

    images = torch.rand(2, 3, 96, 96)  # (B, 3, H, W)
    for path, side in ((standin_paths.clip_rn50x16, 96), (standin_paths.clip_scorer, 64)):
        bundle = load_clip(path)
        archive = torch.jit.load(path)
        assert bundle.name.startswith("openai:")
        tokens = bundle.tokenizer(["a red circle", "two shapes"])
        with torch.no_grad():
            assert torch.allclose(bundle.model.encode_image(images[..., :side, :side]),
                                  archive.encode_image(images[..., :side, :side]), atol=1e-5)
            assert torch.allclose(bundle.model.encode_text(tokens), archive.encode_text(tokens), atol=1e-5)
    grid = build_encoder(f"clip-grid:{standin_paths.clip_rn50x16}")
    with torch.no_grad():
        assert grid(images).shape == (2, 9, 256)  # RN50x16's 12x12x3072 grid, scaled to 3x3x256


def test_standin_beit_nfresnet_and_gptj_load_through_the_registry_and_lm(standin_paths):
    from vlbridge.models.lm import FrozenLM
    from vlbridge.models.registry import build_encoder

    beit = build_encoder(f"hf:{standin_paths.beit_large}:grid")
    beit_ft = build_encoder(f"hf:{standin_paths.beit_large_ft22k}:grid")  # a classification checkpoint's BeitModel
    random_beit = build_encoder(f"random:hf:{standin_paths.beit_large}:grid")
    nf = build_encoder(f"timm:nf_resnet50@{standin_paths.nf_resnet50}:64px")
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert beit(pixels).shape == beit_ft(pixels).shape == random_beit(pixels).shape == (2, 16, 32)  # 4x4, no CLS
        assert not torch.allclose(beit(pixels), beit_ft(pixels)) and not torch.allclose(beit(pixels), random_beit(pixels))
        assert nf(torch.rand(2, 3, 64, 64)).shape == (2, 2048)  # NF-ResNet50's pooled feature
    lm = FrozenLM.from_pretrained(standin_paths.lm)
    assert lm.model.config.model_type == "gptj" and lm.hidden_size == 64
    assert lm.tokenizer.eos_token == lm.tokenizer.bos_token == "<|endoftext|>" and not lm.prepend_bos
    text = "Q: what colour is the circle? A: red\n"
    assert lm.decode(lm.tokenize([text])[0]) == text  # byte-level: any text round-trips


# ------------------------------------------------------------------------------------ dry run
@pytest.mark.slow
def test_dry_run_runs_the_paper_recipe_end_to_end(tmp_path, capsys):
    out = tmp_path / "dry"
    argv = ["study", "--preset", "paper", "--dry-run", "--out", str(out), "--cache", str(tmp_path / "cache")]
    assert main(argv) == 0
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert verdict.startswith("paper dry run passed in ")
    results = json.loads((out / "results.json").read_text())
    encoders = ["clip", "supervised", "self-supervised", "random-clip", "random-supervised", "random-self-supervised",
                "beit-ft22k"]
    assert results["config"]["preset"] == "paper" and results["config"]["cache_dir"] == ""  # no path recorded
    assert list(results["captioning"]) == encoders
    for encoder in encoders:
        entry = results["captioning"][encoder]
        assert list(entry) == ["coco", "nocaps"]  # COCO first: the headline set
        assert set(entry["nocaps"]["by_domain"]) == {"in", "near", "out", "entire"}
        assert entry["coco"]["clip_scorer"].startswith("openai:") and entry["coco"]["CLIP-S"] is not None
    assert set(results["likelihood"]) == {*encoders, "blind"}  # COCO test captions' NLL; no text ceiling here
    by_id = {f["id"]: f for f in results["findings"]}
    assert by_id["C1"]["effect"] is None and by_id["C3"]["effect"] is not None and by_id["C5"]["n"] == 8
    assert list(results["vqa"]) == [*encoders, "blind"]
    assert all(list(shots) == ["0", "1", "2", "4"] for shots in results["vqa"].values())
    assert (out / "report.md").read_text().startswith("# vlbridge study report (paper preset)")
    assert (out / "report.html").is_file()
    paths = yaml.safe_load((out / "standins" / "paper-paths.yaml").read_text())["paper"]
    assert results["config"]["paper"] == paths
    assert not (tmp_path / "cache" / "rung").exists()  # no encoder is trained in the paper recipe
