"""HF (BeitModel / CLIPVisionModel / CLIPModel directories) and CLIP (open_clip ModifiedResNet /
ViT) encoders: tiny random models saved in their real formats, loaded through the registry,
compared with the original library's outputs; grid token counts; random re-initialisation."""

from __future__ import annotations

import open_clip
import pytest
import torch
import transformers as tf
from PIL import Image

from vlbridge.models.bundle import ClipBundle
from vlbridge.models.encoders_clip import ClipImageEncoder
from vlbridge.models.registry import build_encoder


IMAGE = Image.new("RGB", (50, 40), (10, 200, 90))


def _save_hf(directory, model, processor):
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def beit_dir(tmp_path_factory):
    torch.manual_seed(7)  # not the random-init seed (0): "random:" must differ from these weights
    config = tf.BeitConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    processor = tf.BeitImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    return _save_hf(tmp_path_factory.mktemp("beit"), tf.BeitModel(config).eval(), processor)


@pytest.fixture(scope="module")
def clip_vision_dir(tmp_path_factory):
    torch.manual_seed(7)
    config = tf.CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    processor = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return _save_hf(tmp_path_factory.mktemp("clipv"), tf.CLIPVisionModel(config).eval(), processor)


def test_hf_beit_pooled_and_grid(beit_dir):
    reference = tf.BeitModel.from_pretrained(beit_dir).eval()
    processor = tf.AutoImageProcessor.from_pretrained(beit_dir)
    pooled = build_encoder(f"hf:{beit_dir}")
    grid = build_encoder(f"hf:{beit_dir}:grid")
    pixels = processor(images=IMAGE, return_tensors="pt")["pixel_values"]
    assert torch.equal(pooled.preprocess(IMAGE), pixels[0])
    with torch.no_grad():
        out = reference(pixel_values=pixels)
        assert torch.allclose(pooled(pixels), out.pooler_output, atol=1e-6)
        assert torch.allclose(grid(pixels), out.last_hidden_state[:, 1:], atol=1e-6)
    assert (pooled.feature_dim, pooled.num_tokens) == (32, 1)
    assert (grid.feature_dim, grid.num_tokens) == (32, (32 // 8) ** 2)
    assert pooled.encoder_id.startswith("hf:beit@") and grid.encoder_id.startswith("hf:beit:grid@")


def test_hf_clip_vision_and_full_clip_dir(clip_vision_dir, tmp_path):
    reference = tf.CLIPVisionModel.from_pretrained(clip_vision_dir).eval()
    grid = build_encoder(f"hf:{clip_vision_dir}:grid")
    pooled = build_encoder(f"hf:{clip_vision_dir}")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = reference(pixel_values=pixels)
        assert torch.allclose(grid(pixels), out.last_hidden_state[:, 1:], atol=1e-6)
        assert torch.allclose(pooled(pixels), out.pooler_output, atol=1e-6)
    assert grid.num_tokens == 16
    # a full CLIPModel directory gives its vision tower
    torch.manual_seed(1)
    full = tf.CLIPModel(
        tf.CLIPConfig(
            vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
            text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99),
            projection_dim=16,
        )
    ).eval()
    full_dir = _save_hf(tmp_path / "clip", full, tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))
    from_full = build_encoder(f"hf:{full_dir}:grid")
    with torch.no_grad():
        expected = full.vision_model(pixel_values=pixels).last_hidden_state[:, 1:]
        assert torch.allclose(from_full(pixels), expected, atol=1e-6)


def test_hf_random_init(beit_dir):
    trained = build_encoder(f"hf:{beit_dir}")
    random_a = build_encoder(f"random:hf:{beit_dir}")
    random_b = build_encoder(f"random:hf:{beit_dir}")
    assert random_a.encoder_id == random_b.encoder_id != trained.encoder_id
    assert "random" in random_a.encoder_id
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(random_a(pixels), random_b(pixels))
        assert not torch.allclose(random_a(pixels), trained(pixels))


def _tiny_openclip(vision_cfg: dict) -> ClipBundle:
    torch.manual_seed(7)
    text_cfg = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
    model = open_clip.model.CLIP(embed_dim=24, vision_cfg=vision_cfg, text_cfg=text_cfg).eval()
    size = vision_cfg["image_size"]
    preprocess = open_clip.image_transform(size, is_train=False)
    return ClipBundle(model=model, preprocess=preprocess, tokenizer=lambda texts: torch.zeros(len(texts), 8, dtype=torch.long), name="tiny")


RN_CFG = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None, "head_width": 16}
VIT_CFG = {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16}


def test_openclip_resnet_grid_is_final_map_before_attention_pool():
    bundle = _tiny_openclip(RN_CFG)
    pooled = ClipImageEncoder(bundle)
    grid = ClipImageEncoder(bundle, grid=True)
    visual = bundle.model.visual
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        x = visual.stem(pixels)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))  # (2, 512, 2, 2)
        assert torch.allclose(grid(pixels), x.flatten(2).transpose(1, 2), atol=1e-6)
        assert torch.allclose(pooled(pixels), bundle.model.encode_image(pixels), atol=1e-6)
    assert (grid.num_tokens, grid.feature_dim) == ((64 // 32) ** 2, 16 * 32)
    assert (pooled.num_tokens, pooled.feature_dim) == (1, 24)
    assert grid.encoder_id.startswith("clip:ModifiedResNet:grid@")


def test_openclip_vit_grid_is_patch_tokens_after_ln_post():
    bundle = _tiny_openclip(VIT_CFG)
    grid = ClipImageEncoder(bundle, grid=True)
    pixels = torch.randn(2, 3, 32, 32)
    visual = bundle.model.visual
    visual.output_tokens = True  # open_clip's own way of returning the patch tokens
    with torch.no_grad():
        _, tokens = visual(pixels)
    visual.output_tokens = False
    with torch.no_grad():
        assert torch.allclose(grid(pixels), tokens, atol=1e-6)
    assert (grid.num_tokens, grid.feature_dim) == ((32 // 8) ** 2, 32)
    assert grid.preprocess_id.startswith("32x32-")


def test_openclip_random_reinit_changes_every_matrix():
    bundle = _tiny_openclip(VIT_CFG)
    trained = ClipImageEncoder(bundle)
    before = {k: v.clone() for k, v in trained.tower.state_dict().items()}
    random_a = ClipImageEncoder(_tiny_openclip(VIT_CFG), random_init=True)
    random_b = ClipImageEncoder(_tiny_openclip(VIT_CFG), random_init=True)
    assert random_a.encoder_id == random_b.encoder_id != trained.encoder_id
    for name, value in random_a.tower.state_dict().items():
        if value.ndim > 1:
            assert not torch.equal(value, before[name]), name
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(random_a(pixels), random_b(pixels))


def test_clip_specs_load_a_saved_run(tmp_path):
    from vlbridge.models.clip import save_openclip_run
    from vlbridge.models.clip_loading import load_clip

    bundle = _tiny_openclip(RN_CFG)
    model_cfg = {"embed_dim": 24, "vision_cfg": RN_CFG, "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    run = tmp_path / "run"
    save_openclip_run(bundle.model, model_cfg, run)
    reference = load_clip(run)
    pooled = build_encoder(f"clip:{run}")
    grid = build_encoder(f"clip-grid:{run}")
    random_grid = build_encoder(f"random:clip-grid:{run}")
    pixels = reference.preprocess(IMAGE)[None]
    with torch.no_grad():
        assert torch.allclose(pooled(pixels), reference.model.encode_image(pixels), atol=1e-6)
        assert grid(pixels).shape == (1, 4, 512)
        assert not torch.allclose(random_grid(pixels), grid(pixels))
    assert torch.equal(pooled.preprocess(IMAGE), reference.preprocess(IMAGE))
    assert random_grid.encoder_id.startswith("random:clip:ModifiedResNet:grid@")


def test_clip_specs_load_a_hf_clip_directory(tmp_path):
    from helpers.clip_fixtures import hf_clip_dir  # the CLIP loaders' tiny HF CLIPModel directory

    from vlbridge.models.clip_loading import load_clip

    folder = hf_clip_dir(tmp_path / "hf")
    bundle = load_clip(str(folder))
    pooled = build_encoder(f"clip:{folder}")
    grid = build_encoder(f"clip-grid:{folder}")
    pixels = bundle.preprocess(IMAGE)[None]
    with torch.no_grad():
        assert torch.allclose(pooled(pixels), bundle.model.encode_image(pixels), atol=1e-6)
        hidden = bundle.model.hf_model.vision_model(pixel_values=pixels).last_hidden_state
        assert torch.allclose(grid(pixels), hidden[:, 1:], atol=1e-6)
    assert (pooled.feature_dim, grid.num_tokens, grid.feature_dim) == (24, 16, 32)


def test_clip_arch_at_path_spec_loads_an_open_clip_state_dict(tmp_path):
    from vlbridge.models.clip import create_clip

    bundle = create_clip("vl-tiny-rn")
    path = tmp_path / "tiny_rn.pt"
    torch.save(bundle.model.state_dict(), path)
    grid = build_encoder(f"clip-grid:vl-tiny-rn@{path}")
    reference = ClipImageEncoder(bundle, grid=True)
    assert grid.encoder_id == reference.encoder_id  # same architecture + weights
    pixels = reference.preprocess(IMAGE)[None]
    with torch.no_grad():
        assert torch.equal(grid(pixels), reference(pixels))
