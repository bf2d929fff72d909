"""`vlbridge score clip` end to end: a tiny CLIP saved as a vlbridge run dir, real images on disk."""

import json

import numpy as np
import pytest

from vlbridge.cli import main
from vlbridge.data import shapes
from vlbridge.evaluation.metrics.clip_score import clip_s_from_embeddings
from vlbridge.models.clip import architecture_config, model_from_config, save_openclip_run
from vlbridge.models.clip_loading import load_clip


@pytest.fixture()
def run_dir(tmp_path):
    config = architecture_config("vl-micro-vit")
    model = model_from_config(config)
    save_openclip_run(model, config, tmp_path / "clip")
    return tmp_path / "clip"


def test_score_clip_equals_the_formula_on_the_same_embeddings(tmp_path, run_dir, capsys):
    records = shapes.image_text_records(3, split="test", seed=0)
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for record in records:
        record.image.save(image_dir / f"{record.id}.png")
    cands = {r.id: r.captions[0] for r in records}
    refs = {r.id: r.captions[1:] for r in records}
    (tmp_path / "captions.json").write_text(json.dumps({"cands": cands, "refs": refs}))
    out = tmp_path / "scores.json"
    code = main(["score", "clip", "--images", str(image_dir), "--captions", str(tmp_path / "captions.json"),
                 "--model", str(run_dir), "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    bundle = load_clip(run_dir)
    ids = [r.id for r in records]
    images = bundle.embed_images([records[i].image for i in range(3)]).numpy()
    prefixed = lambda text: "A photo depicts " + text  # noqa: E731 - Hessel et al.'s prefix
    cand_emb = bundle.embed_texts([prefixed(cands[i]) for i in ids]).numpy()
    ref_emb = [bundle.embed_texts([prefixed(t) for t in refs[i]]).numpy() for i in ids]
    expected = clip_s_from_embeddings(images, cand_emb, ref_emb, ids=ids)
    assert np.isclose(result["CLIP-S"], expected["CLIP-S"], atol=1e-5)
    assert np.isclose(result["RefCLIP-S"], expected["RefCLIP-S"], atol=1e-5)
    assert str(run_dir) in json.dumps(result)


def test_score_clip_missing_model_is_one_line_error(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps({"cands": {"a": "x"}}))
    code = main(["score", "clip", "--images", str(tmp_path), "--captions", str(tmp_path / "c.json"),
                 "--model", str(tmp_path / "nope")])
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1
