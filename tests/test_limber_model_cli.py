"""`vlbridge caption` and `vlbridge vqa` end to end through `vlbridge.cli.main`, with a tiny LM and
a tiny timm encoder saved on disk and a LiMBeR checkpoint made here. Spec: vlbridge.commands.caption
and vlbridge.commands.vqa."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.tiny_lm import save_tiny_lm
from vlbridge.cli import main
from vlbridge.data.records import open_image
from vlbridge.models.generation import GenerationConfig, caption_images, first_line, generate
from vlbridge.models.limber import Limber, LimberConfig


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A LiMBeR checkpoint (random projector) over a tiny GPT-2 and a timm test_resnet file."""
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("cli-limber")
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / "enc.safetensors"))
    lm_dir = save_tiny_lm(root / "lm", "gpt2")
    config = LimberConfig(encoder=f"timm:test_resnet@{root / 'enc.safetensors'}:64px", lm=str(lm_dir), num_prefix_tokens=2)
    model = Limber.build(config)
    with torch.no_grad():
        model.projector.proj.weight.mul_(20)  # livelier prefixes: different images, different captions
    return model.save(root / "ckpt")


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """A small shapes-world dataset on disk (images/, vqa.jsonl) as `vlbridge data shapes` writes it."""
    from vlbridge.data.shapes import write_dataset

    out = tmp_path_factory.mktemp("shapes") / "data"
    write_dataset(out, n=8, seed=0, image_size=32, progress=False)
    return out


@pytest.fixture(scope="module")
def model(checkpoint):
    return Limber.load(checkpoint)


def expected_captions(model, paths, **config):
    pixels = torch.stack([model.encoder.preprocess(open_image(p)) for p in paths])
    return caption_images(model, {"pixel_values": pixels}, prompt="A picture of", config=GenerationConfig(**config))


def test_caption_one_image_prints_its_caption(checkpoint, model, shapes_dir, capsys):
    image = sorted((shapes_dir / "images").glob("*.png"))[0]
    assert main(["caption", str(image), "--model", str(checkpoint), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out == expected_captions(model, [image], max_new_tokens=8)[0] + "\n"


def test_caption_several_images_in_batches(checkpoint, model, shapes_dir, capsys):
    images = sorted((shapes_dir / "images").glob("*.png"))[:3]
    argv = ["caption", *map(str, images), "--model", str(checkpoint), "--batch-size", "2", "--max-new-tokens", "8"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    expected = [expected_captions(model, [image], max_new_tokens=8)[0] for image in images]  # one at a time
    assert lines == [f"{image}\t{caption}" for image, caption in zip(images, expected)]
    assert len(set(expected)) > 1


def test_caption_beam_and_sampling_options_reach_the_decoder(checkpoint, model, shapes_dir, capsys):
    images = sorted((shapes_dir / "images").glob("*.png"))[:2]
    base = ["caption", *map(str, images), "--model", str(checkpoint), "--max-new-tokens", "6"]
    assert main([*base, "--strategy", "beam", "--beams", "4", "--prompt", "Q:"]) == 0
    beam = [line.split("\t", 1)[1] for line in capsys.readouterr().out.rstrip("\n").split("\n")]
    pixels = torch.stack([model.encoder.preprocess(open_image(p)) for p in images])
    config = GenerationConfig(strategy="beam", num_beams=4, max_new_tokens=6)
    assert beam == caption_images(model, {"pixel_values": pixels}, prompt="Q:", config=config)
    assert main([*base, "--strategy", "sample", "--top-p", "0.5", "--temperature", "0.8", "--seed", "3"]) == 0
    sampled = [line.split("\t", 1)[1] for line in capsys.readouterr().out.rstrip("\n").split("\n")]
    config = GenerationConfig(strategy="sample", top_p=0.5, temperature=0.8, seed=3, max_new_tokens=6)
    assert sampled == caption_images(model, {"pixel_values": pixels}, config=config)


def test_caption_errors_are_one_line(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["caption", str(bad), "--model", str(checkpoint)]) == 2
    assert "cannot decode image" in capsys.readouterr().err
    assert main(["caption", str(bad), "--model", str(tmp_path)]) in (2,)
    image = tmp_path / "ok.png"
    from PIL import Image

    Image.new("RGB", (20, 20)).save(image)
    assert main(["caption", str(image), "--model", str(tmp_path)]) == 2
    assert "not a LiMBeR checkpoint" in capsys.readouterr().err
    assert main(["caption", str(image), "--model", str(checkpoint), "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err


def support_records(shapes_dir):
    return [json.loads(line) for line in (shapes_dir / "vqa.jsonl").read_text().splitlines()]


def answer_of(model, prompt_segments, max_new_tokens=10):
    """Reference: embed the segments, greedy-decode, first line."""
    from vlbridge.models.limber import build_prompt_embeds

    rows = model.embed_segments([prompt_segments])
    embeds, mask = build_prompt_embeds(model.lm, rows)
    return first_line(model.lm.decode(generate(model.lm, embeds, mask, GenerationConfig(max_new_tokens=max_new_tokens))[0]))


def test_vqa_zero_shot_prompt_is_image_then_question(checkpoint, model, shapes_dir, capsys):
    image = sorted((shapes_dir / "images").glob("*.png"))[0]
    assert main(["vqa", str(image), "--question", "what colour is the circle?", "--model", str(checkpoint)]) == 0
    expected = answer_of(model, [open_image(image), "Q: what colour is the circle? A:"])
    assert capsys.readouterr().out == expected + "\n"


def test_vqa_template_words_the_question(checkpoint, model, shapes_dir, capsys):
    image = sorted((shapes_dir / "images").glob("*.png"))[0]
    argv = ["vqa", str(image), "--question", "what colour is the circle?", "--model", str(checkpoint)]
    assert main([*argv, "--template", "Question: {question} Answer:"]) == 0
    expected = answer_of(model, [open_image(image), "Question: what colour is the circle? Answer:"])
    assert capsys.readouterr().out == expected + "\n"
    assert main([*argv, "--template", "Question: Answer:"]) == 2
    assert "exactly one {question}" in capsys.readouterr().err


def test_vqa_few_shot_uses_seeded_solved_examples_from_the_support_file(checkpoint, model, shapes_dir, capsys):
    from vlbridge.data.records import VQARecord
    from vlbridge.evaluation.vqa import choose_shots, majority_answer

    image = sorted((shapes_dir / "images").glob("*.png"))[-1]
    question = "how many shapes are there?"
    argv = ["vqa", str(image), "--question", question, "--model", str(checkpoint), "--shots", "2"]
    argv += ["--support", str(shapes_dir / "vqa.jsonl"), "--seed", "4"]
    assert main(argv) == 0
    answer = capsys.readouterr().out

    support = [
        VQARecord(r["question_id"], r["image_id"], shapes_dir / r["image"], r["question"], r["answers"], r["answer_type"])
        for r in support_records(shapes_dir)
    ]
    query = VQARecord(f"cli:{question}", image.stem, image, question, [])
    shots = choose_shots(query, support, 2, seed=4)
    assert len(shots) == 2 and image.stem not in {s.image_id for s in shots}
    segments = []
    for shot in shots:
        segments += [open_image(shot.image), f"Q: {shot.question} A: {majority_answer(shot.answers)}\n"]
    segments += [open_image(image), f"Q: {question} A:"]
    assert answer == answer_of(model, segments) + "\n"

    assert main([*argv, "--blind"]) == 0
    blind_text = "".join(s for s in segments if isinstance(s, str))
    tokens = torch.tensor(model.lm.tokenize([blind_text])[0])
    embeds, mask = model.lm.embed(tokens)[None], torch.ones(1, len(tokens), dtype=torch.long)
    expected_blind = first_line(model.lm.decode(generate(model.lm, embeds, mask, GenerationConfig(max_new_tokens=10))[0]))
    assert capsys.readouterr().out == expected_blind + "\n"


def test_vqa_errors_are_one_line(checkpoint, shapes_dir, tmp_path, capsys):
    image = sorted((shapes_dir / "images").glob("*.png"))[0]
    base = ["vqa", str(image), "--question", "what?", "--model", str(checkpoint)]
    assert main([*base, "--shots", "2"]) == 2
    assert "needs --support" in capsys.readouterr().err
    assert main([*base, "--shots", "1", "--support", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "vqa.jsonl"
    broken.write_text("{not json}\n")
    assert main([*base, "--shots", "1", "--support", str(broken)]) == 2
    assert "no usable VQA lines" in capsys.readouterr().err
    assert main([*base, "--shots", "50", "--support", str(shapes_dir / "vqa.jsonl")]) == 2
    assert "usable images" in capsys.readouterr().err


def test_a_tar_member_image_segment_embeds_like_its_bytes(model, shapes_dir, tmp_path):
    import tarfile

    from vlbridge.data.records import TarMember

    image = sorted((shapes_dir / "images").glob("*.png"))[0]
    shard = tmp_path / "one.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(image, arcname="0.png")
    with tarfile.open(shard) as tar:
        info = tar.getmember("0.png")
    member = TarMember(str(shard), info.offset_data, info.size)
    with torch.no_grad():
        (from_member,), (from_bytes,) = model.embed_segments([[member]]), model.embed_segments([[image.read_bytes()]])
    assert torch.equal(from_member[0], from_bytes[0])
