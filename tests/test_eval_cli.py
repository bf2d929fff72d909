"""`vlbridge eval zeroshot|probe|retrieval|robustness` end to end through `vlbridge.cli.main`.

A tiny random CLIP is saved as a vlbridge run directory and loaded by the real `load_clip`;
every number the command writes is compared with the pure evaluation functions run on the
same model and data, embedded by the pixel loop the commands ran before their features went
through the FeatureStore (`eval_helpers.legacy_embed_records`): the numbers must not move.
"""

import json

import pytest
import torch
from helpers.eval_helpers import legacy_embed_records, save_tiny_run, single_thread  # noqa: F401  (autouse fixture)
from PIL import Image

from vlbridge.cli import main
from vlbridge.data.datasets import load_dataset
from vlbridge.evaluation.linear_probe import ProbeConfig, linear_probe
from vlbridge.evaluation.retrieval import retrieval_scores
from vlbridge.evaluation.robustness import LabelledFeatures, evaluate_robustness
from vlbridge.evaluation.templates import load_templates
from vlbridge.evaluation.zero_shot import build_classifier, zero_shot_scores
from vlbridge.models.clip_loading import load_clip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return str(save_tiny_run(tmp_path_factory.mktemp("clip") / "run"))


def _run(argv, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main([*argv, "--device", "cpu", "--out", str(out), "--cache", str(tmp_path / "features")]) == 0
    printed = capsys.readouterr().out
    return json.loads(out.read_text()), printed


def load_classification(spec, split, n, seed):
    return load_dataset(spec, "classification", split=split, n=n, seed=seed)


def _features(bundle, data):
    features, kept = legacy_embed_records(bundle, data.records)
    return features, data.labels(kept)


def test_zeroshot_matches_library(run_dir, tmp_path, capsys):
    template_file = tmp_path / "prompts.txt"
    template_file.write_text("a photo of a {}.\na {} shape.\n", encoding="utf-8")
    result, printed = _run(
        ["eval", "zeroshot", "--model", run_dir, "--dataset", "shapes", "--n", "60", "--templates", str(template_file)],
        tmp_path,
        capsys,
    )
    bundle = load_clip(run_dir)
    test = load_classification("shapes", "test", 60, 0)
    features, labels = _features(bundle, test)
    classifier = build_classifier(bundle, test.classnames, ["a photo of a {}.", "a {} shape."])
    assert result["metrics"] == zero_shot_scores(features, classifier, labels)
    assert result["n_templates"] == 2 and result["classes"] == test.classnames and result["split"] == "test"
    assert "top1" in printed and "mean_per_class_recall" in printed


def test_zeroshot_openai_templates_on_a_shift(run_dir, tmp_path, capsys):
    result, _ = _run(
        ["eval", "zeroshot", "--model", run_dir, "--dataset", "shapes-shift:blur", "--n", "8", "--templates", "openai"],
        tmp_path,
        capsys,
    )
    bundle = load_clip(run_dir)
    test = load_classification("shapes-shift:blur", "test", 8, 0)
    features, labels = _features(bundle, test)
    classifier = build_classifier(bundle, test.classnames, load_templates("openai"))
    assert result["n_templates"] == 80
    assert result["metrics"] == zero_shot_scores(features, classifier, labels)


@pytest.mark.parametrize("refine", [None, 0])
def test_probe_matches_library(run_dir, tmp_path, capsys, refine):
    argv = ["eval", "probe", "--model", run_dir, "--dataset", "shapes", "--n", "52", "--n-train", "156"]
    argv += ["--c-min", "0.1", "--c-max", "10", "--c-steps", "2", "--seed", "3"]
    result, printed = _run(argv + ([] if refine is None else ["--refine-per-decade", str(refine)]), tmp_path, capsys)
    bundle = load_clip(run_dir)
    train_x, train_y = _features(bundle, load_classification("shapes", "train", 156, 3))
    test_x, test_y = _features(bundle, load_classification("shapes", "test", 52, 3))
    config = ProbeConfig(c_min=0.1, c_max=10.0, c_steps=2, seed=3, refine_per_decade=8 if refine is None else refine)
    assert result["metrics"] == linear_probe(train_x, train_y, test_x, test_y, 52, config)
    assert result["n_train"] == 156 and result["probe_config"]["c_steps"] == 2
    stages = [row["stage"] for row in result["metrics"]["sweep"]]
    refined = stages.count("refine")  # 2 decades: 4 halvings, 1 or 2 new C values each (1 at the grid's edges)
    assert stages.count("coarse") == 2 and (refined == 0 if refine == 0 else 4 <= refined <= 8)
    assert "C " in printed


def test_retrieval_matches_library(run_dir, tmp_path, capsys):
    result, printed = _run(["eval", "retrieval", "--model", run_dir, "--dataset", "shapes", "--n", "12"], tmp_path, capsys)
    bundle = load_clip(run_dir)
    records = load_dataset("shapes", "image_text", split="test", n=12).records
    images, _ = legacy_embed_records(bundle, records)
    texts = [caption for record in records for caption in record.captions]
    owners = [i for i, record in enumerate(records) for _ in record.captions]
    assert result["metrics"] == retrieval_scores(images, bundle.embed_texts(texts), owners)
    assert result["metrics"]["n_texts"] == 72  # 6 captions per shapes image
    assert "text_to_image_R@10" in printed


def test_robustness_matches_library(run_dir, tmp_path, capsys):
    argv = ["eval", "robustness", "--model", run_dir, "--n", "26", "--n-train", "104", "--c-steps", "2"]
    argv += ["--c-min", "0.1", "--c-max", "1", "--shift", "shapes-shift:invert", "--shift", "shapes-shift:sketch"]
    result, printed = _run(argv, tmp_path, capsys)
    bundle = load_clip(run_dir)

    def labelled(spec, split, n):
        return LabelledFeatures(*_features(bundle, load_classification(spec, split, n, 0)))

    shifted = {spec: labelled(spec, "test", 26) for spec in ("shapes-shift:invert", "shapes-shift:sketch")}
    classifier = build_classifier(bundle, load_classification("shapes", "test", 1, 0).classnames, ["a photo of a {}."])
    expected = evaluate_robustness(
        labelled("shapes", "train", 104), labelled("shapes", "test", 26), shifted, 52, classifier,
        ProbeConfig(c_min=0.1, c_max=1.0, c_steps=2),
    )
    assert result["metrics"] == expected
    assert result["shifts"] == ["shapes-shift:invert", "shapes-shift:sketch"]
    assert "shapes-shift:sketch" in printed and "clean" in printed


def _image_folder(root, classes=("red thing", "blue thing", "green thing"), per_class=5):
    colours = {"red thing": (220, 30, 30), "blue thing": (30, 30, 220), "green thing": (30, 200, 30)}
    for name in classes:
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20 + i, 20), colours[name]).save(folder / f"{i}.png")
    return root


def test_imagefolder_zeroshot_and_probe(run_dir, tmp_path, capsys):
    root = _image_folder(tmp_path / "folder")
    result, _ = _run(["eval", "zeroshot", "--model", run_dir, "--dataset", f"imagefolder:{root}"], tmp_path, capsys)
    assert result["classes"] == ["blue thing", "green thing", "red thing"]
    assert result["metrics"]["n"] == 3  # a seeded stratified 20% of 5 images per class
    argv = ["eval", "probe", "--model", run_dir, "--dataset", f"imagefolder:{root}", "--c-steps", "1"]
    result, _ = _run(argv, tmp_path, capsys)
    assert result["n_train"] == 12 and result["metrics"]["top1"] == 1.0  # colours are trivially separable


def test_open_clip_state_dict_with_arch(tmp_path, capsys):
    from vlbridge.models.clip import create_clip

    tiny = "vl-micro-vit"  # one of vlbridge's registered tiny open_clip configs
    torch.save(create_clip(tiny).model.state_dict(), tmp_path / "weights.pt")
    argv = ["eval", "zeroshot", "--model", str(tmp_path / "weights.pt"), "--arch", tiny, "--dataset", "shapes", "--n", "4"]
    result, _ = _run(argv, tmp_path, capsys)
    assert result["model"].startswith(f"open_clip:{tiny}@") and result["metrics"]["n"] == 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["zeroshot", "--dataset", "mnist-please"], "unknown dataset spec 'mnist-please'"),
        (["zeroshot", "--dataset", "shapes-shift:rain"], "shift= expects one of sketch, noisy, blur, invert"),
        (["zeroshot", "--dataset", "shapes", "--n", "0"], "--n must be a whole number from 1 to 100,000,000, got 0"),
        (["probe", "--dataset", "shapes?split=test"], "fixes split=test, but split 'train' is read here"),
        (["zeroshot", "--dataset", "shapes", "--templates", "nope"], "--templates expects one of"),
        (["robustness", "--dataset", "imagefolder:/nowhere"], "needs at least one --shift"),
        (["probe", "--dataset", "shapes", "--device", "gpu0"], "--device expects"),
    ],
)
def test_user_mistakes_are_one_line_errors(run_dir, argv, message, capsys):
    assert main(["eval", argv[0], "--model", run_dir, *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlbridge: error:") and message in err and "Traceback" not in err


def test_missing_model_is_a_user_error(tmp_path, capsys):
    assert main(["eval", "zeroshot", "--model", str(tmp_path / "absent"), "--dataset", "shapes"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["zeroshot", "probe", "retrieval", "robustness"])
def test_help_explains_model_spec_and_datasets(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("open_clip/OpenAI checkpoint file", "--arch", "Hugging Face CLIPModel", "shapes-shift:", "imagefolder:PATH"):
        assert needle in text


def test_robustness_refuses_a_shifted_set_with_other_classes(run_dir, tmp_path, capsys):
    clean = _image_folder(tmp_path / "clean")
    other = _image_folder(tmp_path / "other", classes=("red thing", "blue thing"))
    argv = ["eval", "robustness", "--model", run_dir, "--dataset", f"imagefolder:{clean}", "--shift", f"imagefolder:{other}"]
    assert main(argv) == 2
    assert "differing: ['green thing']" in capsys.readouterr().err
