"""`vlbridge score captions|vqa|clip` end to end through `vlbridge.cli.main`.

Results must equal the library functions on the same data; every malformed input must end
in exit code 2 with one `vlbridge: error: ...` line naming the problem (no traceback).
"""

import json

import pytest

from vlbridge.cli import main
from vlbridge.evaluation.metrics.io import score_captions
from vlbridge.evaluation.metrics.vqa_accuracy import vqa_accuracy

REFS = {
    "1": ["A red circle above a blue square.", "a circle over a square"],
    "2": ["Two green triangles.", "two triangles, both green"],
    "3": ["A yellow star next to a cross.", "a star and a cross"],
    "4": ["A purple hexagon.", "one hexagon that is purple"],
}
CANDS = {"1": "a red circle above a square", "2": "two green triangles", "3": "a star", "4": "a purple hexagon"}
DOMAINS = {"1": "in", "2": "in", "3": "out", "4": "near"}


def write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def run_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlbridge: error: "), err
    return err[0]


def test_captions_file_scores_equal_library(tmp_path, capsys):
    source = write(tmp_path / "caps.json", {"refs": REFS, "cands": CANDS, "domains": DOMAINS})
    out = tmp_path / "out" / "scores.json"
    assert main(["score", "captions", source, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "CIDEr-D" in printed and "ROUGE-L" in printed and "4 images" in printed
    result = json.loads(out.read_text())
    expected = score_captions(REFS, CANDS, "ptb", DOMAINS)
    assert result["corpus"] == pytest.approx(expected["corpus"])
    assert result["per_id"]["3"] == pytest.approx(expected["per_id"]["3"])
    assert set(result["by_domain"]) == {"in", "out", "near", "entire"} and result["df_scope"] == "per-domain"


def test_captions_tokenize_none(tmp_path, capsys):
    source = write(tmp_path / "caps.json", {"refs": REFS, "cands": CANDS})
    out = tmp_path / "scores.json"
    assert main(["score", "captions", source, "--tokenize", "none", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tokenize"] == "none"
    assert result["corpus"] == pytest.approx(score_captions(REFS, CANDS, "none")["corpus"])


def test_coco_and_nocaps_files(tmp_path, capsys):
    images = [{"id": int(k), "file_name": f"{k}.png", "domain": DOMAINS[k] + "-domain"} for k in REFS]
    annotations = [{"image_id": int(k), "id": 10 * int(k) + j, "caption": c} for k in REFS for j, c in enumerate(REFS[k])]
    annotations.append({"image_id": 99, "id": 999, "caption": "an image without a result"})
    results = [{"image_id": int(k), "caption": c} for k, c in CANDS.items()]
    ann_path = write(tmp_path / "ann.json", {"images": images, "annotations": annotations})
    res_path = write(tmp_path / "res.json", results)
    out = tmp_path / "scores.json"
    assert main(["score", "captions", "--coco-annotations", ann_path, "--coco-results", res_path, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = score_captions(REFS, CANDS, "ptb", {k: d + "-domain" for k, d in DOMAINS.items()})
    assert result["num_images"] == 4
    assert result["by_domain"]["out-domain"] == pytest.approx(expected["by_domain"]["out-domain"])
    assert result["corpus"] == pytest.approx(expected["corpus"])


def vqa_items():
    return [
        {"id": "q1", "pred": "Two", "answers": ["2"] * 9 + ["two"], "answer_type": "number"},
        {"id": "q2", "pred": "yes", "answers": ["yes"] * 10, "answer_type": "yes/no"},
        {"id": "q3", "pred": "red", "answers": ["blue"] * 8 + ["red"] * 2, "answer_type": "other"},
    ]


def test_vqa_file(tmp_path, capsys):
    source = write(tmp_path / "vqa.json", {"items": vqa_items()})
    out = tmp_path / "vqa_scores.json"
    assert main(["score", "vqa", source, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(vqa_accuracy(vqa_items())))
    assert f"accuracy {result['accuracy_percent']:.2f}" in capsys.readouterr().out


def official_vqa_files(tmp_path, results):
    items = vqa_items()
    questions = {"questions": [{"question_id": i, "image_id": 7, "question": "?"} for i in range(len(items))]}
    annotations = {
        "annotations": [
            {"question_id": i, "image_id": 7, "question_type": "what", "answer_type": item["answer_type"],
             "answers": [{"answer": a, "answer_id": j + 1, "answer_confidence": "yes"} for j, a in enumerate(item["answers"])]}
            for i, item in enumerate(items)
        ]
    }
    return [write(tmp_path / "q.json", questions), write(tmp_path / "a.json", annotations), write(tmp_path / "r.json", results)]


def test_vqa_official_files(tmp_path, capsys):
    results = [{"question_id": i, "answer": item["pred"]} for i, item in enumerate(vqa_items())]
    q, a, r = official_vqa_files(tmp_path, results)
    out = tmp_path / "vqa.json"
    assert main(["score", "vqa", "--questions", q, "--annotations", a, "--results", r, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["accuracy"] == pytest.approx(vqa_accuracy(vqa_items())["accuracy"])
    assert result["by_question_type"]["what"]["count"] == 3


def test_vqa_official_results_must_cover_the_annotations(tmp_path, capsys):
    q, a, r = official_vqa_files(tmp_path, [{"question_id": 0, "answer": "2"}])
    assert "2 annotated question(s) unanswered" in run_error(["score", "vqa", "--annotations", a, "--results", r], capsys)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b'{"refs": {"1": ["a"]}, "cands": ', "not valid JSON"),
        (b"[1, 2]", "must hold an object with 'refs' and 'cands'"),
        (json.dumps({"refs": {"1": "a dog"}, "cands": {"1": "a dog"}}).encode(), "must be a list of strings"),
        (json.dumps({"refs": {"1": ["a dog"]}, "cands": {"1": "a dog", "2": "a cat"}}).encode(), "no references, e.g. id '2'"),
        (json.dumps({"refs": {"1": ["a dog"], "2": ["x"]}, "cands": {"1": "a dog"}}).encode(), "no candidate, e.g. id '2'"),
        (json.dumps({"refs": {"1": ["a dog"]}, "cands": {"1": 5}}).encode(), "must be a string"),
        (json.dumps({"refs": {"1": ["a dog", None]}, "cands": {"1": "x"}}).encode(), "must all be strings"),
        (json.dumps({"refs": {"1": ["a"]}, "cands": {"1": "a"}, "domains": {}}).encode(), "no domain"),
    ],
)
def test_malformed_caption_files(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    assert message in run_error(["score", "captions", str(path)], capsys)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["score", "captions"], "give either FILE"),
        (["score", "captions", "x.json", "--coco-results", "r.json"], "give either FILE"),
        (["score", "captions", "--coco-annotations", "a.json"], "go together"),
        (["score", "captions", "missing.json"], "does not exist"),
        (["score", "vqa"], "give either FILE"),
    ],
)
def test_bad_command_lines(argv, message, capsys):
    assert message in run_error(argv, capsys)


def test_malformed_vqa_and_coco_files(tmp_path, capsys):
    bad_items = write(tmp_path / "v.json", {"items": [{"id": 1, "pred": "a"}]})
    assert "no 'answers' field" in run_error(["score", "vqa", bad_items], capsys)
    ann = write(tmp_path / "ann.json", {"annotations": [{"image_id": 1, "caption": "a dog"}]})
    res = write(tmp_path / "res.json", [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}])
    assert "more than one caption for image 1" in run_error(["score", "captions", "--coco-annotations", ann, "--coco-results", res], capsys)
    res = write(tmp_path / "res2.json", [{"image_id": 5, "caption": "a"}])
    assert "no reference captions" in run_error(["score", "captions", "--coco-annotations", ann, "--coco-results", res], capsys)


def test_clip_command_checks_images_before_loading_a_model(tmp_path, capsys):
    captions = write(tmp_path / "c.json", {"cands": {"img1": "a dog"}})
    (tmp_path / "imgs").mkdir()
    message = run_error(["score", "clip", "--images", str(tmp_path / "imgs"), "--captions", captions, "--model", "none"], capsys)
    assert "have no image, e.g. id 'img1'" in message
