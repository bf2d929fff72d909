"""Limber: [P(features) ; caption + EOS] inputs, -100 labels, forward's loss = hand-computed CE = the
HF LM's own loss (also per sequence, and with labels), gradients only in the projector, checkpoints of projector + config, prompts and captioning.
Spec: vlbridge.models.limber (+ caption_images / answer_questions of vlbridge.models.generation)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from helpers.tiny_lm import save_tiny_lm
from vlbridge.errors import UserError
from vlbridge.models.generation import GenerationConfig, answer_questions, caption_images, first_line, generate
from vlbridge.models.limber import CONFIG_FILE, WEIGHTS_FILE, Limber, LimberConfig, build_prompt_embeds, caption_id_lists
from vlbridge.models.lm import FrozenLM

FEATURE_DIM = 12


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("limber-lms")
    return {"gpt2": save_tiny_lm(root / "gpt2", "gpt2"), "bos": save_tiny_lm(root / "bos", "llama", add_bos=True)}


@pytest.fixture(scope="module")
def encoder_spec(tmp_path_factory):
    """A timm test_resnet with random weights on disk, as a registry spec (64 px input)."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("encoder") / "test_resnet.safetensors"
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return f"timm:test_resnet@{path}:64px"


def features_model(lm_dir, num_prefix_tokens=2, pooled=True) -> Limber:
    torch.manual_seed(0)
    config = LimberConfig(lm=str(lm_dir), feature_dim=FEATURE_DIM, num_prefix_tokens=num_prefix_tokens, pooled=pooled)
    return Limber.build(config)


def reference_loss(model: Limber, prefix: torch.Tensor, captions: list[list[int]]) -> torch.Tensor:
    """Mean CE over caption tokens + EOS, one unpadded sequence at a time, straight on the HF model
    ([BOS] prefix caption EOS; position i predicts token i + 1)."""
    total, count = 0.0, 0
    lm = model.lm
    token_embeddings = lm.model.get_input_embeddings()
    front = token_embeddings(torch.tensor([lm.bos_token_id] if lm.prepend_bos else [], dtype=torch.long))
    for row, ids in enumerate(captions):
        targets = torch.tensor([*ids, lm.eos_token_id])
        embeds = torch.cat([front, prefix[row], token_embeddings(targets)])[None]  # (1, [1+]P+T, H)
        logits = lm.model(inputs_embeds=embeds).logits[0]  # (P+T, V)
        start = front.shape[0] + prefix.shape[1]
        predicted = logits[start - 1 : start - 1 + len(targets)]  # position i predicts token i + 1
        total = total + F.cross_entropy(predicted, targets, reduction="sum")
        count += len(targets)
    return total / count


def test_training_inputs_layout(lm_dirs):
    model = features_model(lm_dirs["gpt2"])
    lm = model.lm
    prefix = torch.randn(3, 2, lm.hidden_size)
    captions = [[5, 6], [7, 8, 9, 10], []]
    inputs = model.training_inputs(prefix, captions)
    eos, pad = lm.eos_token_id, lm.pad_token_id
    assert inputs.inputs_embeds.shape == (3, 2 + 5, lm.hidden_size)
    assert torch.equal(inputs.inputs_embeds[:, :2], prefix)
    tokens = torch.tensor([[5, 6, eos, pad, pad], [7, 8, 9, 10, eos], [eos, pad, pad, pad, pad]])
    assert torch.equal(inputs.inputs_embeds[:, 2:], lm.embed(tokens))
    assert inputs.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]]
    assert inputs.labels.tolist() == [
        [-100, -100, 5, 6, eos, -100, -100],
        [-100, -100, 7, 8, 9, 10, eos],
        [-100, -100, eos, -100, -100, -100, -100],
    ]
    already_ended = model.training_inputs(prefix[:1], [[5, 6, eos]])
    assert already_ended.labels.tolist() == [[-100, -100, 5, 6, eos]]  # EOS not doubled


def test_bos_models_get_one_untrained_bos_first(lm_dirs):
    model = features_model(lm_dirs["bos"])
    lm = model.lm
    prefix = torch.randn(2, 2, lm.hidden_size)
    inputs = model.training_inputs(prefix, [[5], [6, 7]])
    assert inputs.inputs_embeds.shape[1] == 1 + 2 + 3
    assert torch.equal(inputs.inputs_embeds[:, 0], lm.embed(torch.tensor([lm.bos_token_id, lm.bos_token_id])))
    assert inputs.labels[:, :3].eq(-100).all() and inputs.attention_mask[:, :3].eq(1).all()
    embeds, mask = build_prompt_embeds(lm, [[prefix[0], "a red"]])
    assert torch.equal(embeds[0, 0], lm.embed(torch.tensor([lm.bos_token_id]))[0])


@pytest.mark.parametrize("lm_name", ["gpt2", "bos"])
def test_forward_loss_equals_hand_computed_cross_entropy(lm_dirs, lm_name):
    model = features_model(lm_dirs[lm_name], num_prefix_tokens=3)
    features = torch.randn(3, FEATURE_DIM)
    captions = model.lm.tokenize(["a red circle", "two shapes: a green triangle and a star", "hi"])
    output = model(image_features=features, input_ids=captions, per_sequence=True)
    prefix = model.projector(features)
    assert torch.allclose(output.loss, reference_loss(model, prefix, captions), atol=1e-5)
    assert int(output.num_tokens) == sum(len(ids) + 1 for ids in captions)  # caption tokens + one EOS each
    torch.testing.assert_close(output.loss, output.loss_sum / output.num_tokens)
    assert output.sequence_num_tokens.tolist() == [len(ids) + 1 for ids in captions]
    for row, ids in enumerate(captions):  # each row's sum: the row alone, unpadded, times its token count
        alone = reference_loss(model, prefix[row : row + 1], [ids]) * (len(ids) + 1)
        torch.testing.assert_close(output.sequence_loss_sums[row], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.sequence_loss_sums.sum(), output.loss_sum, rtol=1e-5, atol=1e-5)
    assert output.logits.shape == (3, (1 if model.lm.prepend_bos else 0) + 3 + max(len(c) for c in captions) + 1,
                                   model.lm.vocab_size)
    assert model(image_features=features, input_ids=captions).sequence_loss_sums is None  # only when asked


@pytest.mark.parametrize("lm_name", ["gpt2", "bos"])
def test_forward_loss_equals_the_hf_lm_loss_on_the_same_inputs(lm_dirs, lm_name):
    """The LM's own shifted cross-entropy (HF `labels=`), on the padded batch forward builds."""
    model = features_model(lm_dirs[lm_name])
    features = torch.randn(4, FEATURE_DIM)
    captions = [[5, 6, 7, 8], [9], [10, 11], [12, 13, 14]]
    output = model(image_features=features, input_ids=captions)
    inputs = model.training_inputs(model.image_prefix({"image_features": features}), captions)
    hf = model.lm.model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask, labels=inputs.labels)
    torch.testing.assert_close(output.loss, hf.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(output.logits, hf.logits)


def test_labels_choose_the_scored_tokens(lm_dirs):
    """labels (layout of input_ids, -100 = not scored): the answer after a question, plus EOS."""
    model = features_model(lm_dirs["gpt2"])
    features = torch.randn(2, FEATURE_DIM)
    questions, answers = [[5, 6], [7]], [[8, 9], [10, 11, 12]]
    input_ids = [q + a for q, a in zip(questions, answers)]
    labels = [[-100] * len(q) + a for q, a in zip(questions, answers)]
    output = model(image_features=features, input_ids=input_ids, labels=labels, per_sequence=True)
    assert output.sequence_num_tokens.tolist() == [3, 4]  # answer tokens + EOS
    everything = model(image_features=features, input_ids=input_ids, per_sequence=True)
    inputs = model.training_inputs(model.image_prefix({"image_features": features}), input_ids)
    logits = everything.logits  # (B, L, V): position t predicts token t + 1
    start = model.num_prefix_tokens - 1
    for row, (q, a) in enumerate(zip(questions, answers)):
        targets = inputs.labels[row, model.num_prefix_tokens + len(q) : model.num_prefix_tokens + len(q) + len(a) + 1]
        predicted = logits[row, start + len(q) : start + len(q) + len(a) + 1]
        expected = F.cross_entropy(predicted, targets, reduction="sum")
        torch.testing.assert_close(output.sequence_loss_sums[row], expected, rtol=1e-5, atol=1e-5)
    padded = torch.tensor([[5, 6, 8, 9], [7, 10, 11, 12]])
    tensor_labels = torch.tensor([[-100, -100, 8, 9], [-100, 10, 11, 12]])
    from_tensors = model(image_features=features, input_ids=padded, attention_mask=torch.ones_like(padded),
                         labels=tensor_labels)
    torch.testing.assert_close(from_tensors.loss, output.loss)
    with pytest.raises(ValueError, match="labels row has 1 entries for 4 input_ids"):
        model(image_features=features, input_ids=input_ids, labels=[[1], [2, 3, 4, 5]])


def test_forward_rejects_a_batch_without_exactly_one_image_input(lm_dirs):
    model = features_model(lm_dirs["gpt2"])
    with pytest.raises(ValueError, match="exactly one of pixel_values and image_features"):
        model(input_ids=[[5]])
    with pytest.raises(ValueError, match="exactly one of pixel_values and image_features"):
        model(pixel_values=torch.rand(1, 3, 8, 8), image_features=torch.randn(1, FEATURE_DIM), input_ids=[[5]])
    with pytest.raises(ValueError, match="needs input_ids"):
        model(image_features=torch.randn(1, FEATURE_DIM))


def test_padded_tensor_input_ids_give_the_same_loss(lm_dirs):
    model = features_model(lm_dirs["gpt2"])
    features = torch.randn(2, FEATURE_DIM)
    captions = [[5, 6, 7], [8]]
    padded = torch.tensor([[5, 6, 7], [8, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert caption_id_lists({"input_ids": padded, "attention_mask": mask}) == captions
    from_lists = model(image_features=features, input_ids=captions).loss
    from_tensor = model(image_features=features, input_ids=padded, attention_mask=mask).loss
    assert torch.equal(from_lists, from_tensor)


def test_gradients_reach_only_the_projector_and_training_leaves_the_lm_unchanged(lm_dirs, encoder_spec):
    torch.manual_seed(0)
    config = LimberConfig(encoder=encoder_spec, lm=str(lm_dirs["gpt2"]), num_prefix_tokens=2)
    model = Limber.build(config)
    lm_hash = model.lm.parameter_hash()
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.projector.parameters()}
    pixels = torch.rand(2, 3, 64, 64)
    batch = {"pixel_values": pixels, "input_ids": model.lm.tokenize(["a red circle", "a blue square"])}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    assert model.projector.training and not model.lm.training and not model.encoder.training
    losses = []
    for _ in range(15):
        loss = model(**batch).loss
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
        assert all(p.grad is None for p in model.lm.parameters())
        assert all(p.grad is None for p in model.encoder.parameters())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5  # the projector alone fits two captions
    assert model.lm.parameter_hash() == lm_hash


def test_pixels_go_through_the_encoder(lm_dirs, encoder_spec):
    from vlbridge.models.registry import build_encoder

    model = Limber.build(LimberConfig(encoder=encoder_spec, lm=str(lm_dirs["gpt2"]), num_prefix_tokens=3))
    encoder = build_encoder(encoder_spec)
    assert model.config.feature_dim == encoder.feature_dim and model.config.encoder_id == encoder.encoder_id
    pixels = torch.rand(2, 3, 64, 64)
    prefix = model.image_prefix({"pixel_values": pixels})
    assert prefix.shape == (2, 3, model.lm.hidden_size)
    assert torch.allclose(prefix, model.projector(encoder(pixels)), atol=1e-6)
    features = model.image_prefix({"image_features": encoder(pixels)})
    assert torch.allclose(prefix, features, atol=1e-6)
    with pytest.raises(ValueError, match="image_features' or 'pixel_values"):
        model.image_prefix({"input_ids": [[1]]})


def test_grid_encoders_give_one_prefix_vector_per_token(lm_dirs, encoder_spec):
    model = Limber.build(LimberConfig(encoder=encoder_spec + ":grid", lm=str(lm_dirs["gpt2"])))
    assert not model.config.pooled and model.num_prefix_tokens == model.encoder.num_tokens > 1
    prefix = model.image_prefix({"pixel_values": torch.rand(2, 3, 64, 64)})
    assert prefix.shape == (2, model.encoder.num_tokens, model.lm.hidden_size)


def test_checkpoint_round_trip_holds_projector_and_config_only(lm_dirs, encoder_spec, tmp_path):
    torch.manual_seed(1)
    model = Limber.build(LimberConfig(encoder=encoder_spec, lm=str(lm_dirs["gpt2"]), num_prefix_tokens=2))
    folder = model.save(tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE])  # no temp files left
    projector_bytes = sum(p.numel() * 4 for p in model.projector.parameters())
    assert projector_bytes <= (folder / WEIGHTS_FILE).stat().st_size < projector_bytes + 1024  # never the LM
    saved = yaml.safe_load((folder / CONFIG_FILE).read_text())
    assert saved["feature_dim"] == model.encoder.feature_dim and saved["hidden_size"] == 32
    assert saved["encoder_id"] == model.encoder.encoder_id and saved["lm_name"] == "gpt2"

    loaded = Limber.load(folder)
    assert loaded.config == model.config
    for name, tensor in model.projector.state_dict().items():
        assert torch.equal(loaded.projector.state_dict()[name], tensor)
    pixels = torch.rand(2, 3, 64, 64)
    config = GenerationConfig(max_new_tokens=6)
    assert caption_images(loaded, {"pixel_values": pixels}, config=config) == caption_images(
        model, {"pixel_values": pixels}, config=config
    )
    features_only = Limber.load(folder, with_encoder=False)
    assert features_only.encoder is None
    features = model.encoder(pixels)
    assert torch.allclose(features_only.image_prefix({"image_features": features}), model.image_prefix({"pixel_values": pixels}))


def test_loading_bad_checkpoints_says_what_is_wrong(lm_dirs, tmp_path):
    with pytest.raises(UserError, match="not a LiMBeR checkpoint"):
        Limber.load(tmp_path)
    model = features_model(lm_dirs["gpt2"])
    folder = model.save(tmp_path / "ckpt")
    config = yaml.safe_load((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(yaml.safe_dump({**config, "hidden_size": 48}))
    with pytest.raises(UserError, match="48-d LM"):
        Limber.load(folder)
    (folder / CONFIG_FILE).write_text(yaml.safe_dump({**config, "num_prefix_tokens": 5}))
    with pytest.raises(UserError, match="do not fit"):
        Limber.load(folder)
    (folder / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read projector weights"):
        Limber.load(folder)
    with pytest.raises(UserError, match="image encoder"):
        Limber.build(LimberConfig(lm=str(lm_dirs["gpt2"])))


def test_build_prompt_embeds_left_pads_and_joins_text(lm_dirs):
    lm = FrozenLM.from_pretrained(lm_dirs["gpt2"])
    prefix = torch.randn(2, lm.hidden_size)
    embeds, mask = build_prompt_embeds(lm, [[prefix, "Q: what", " colour? A:"], ["a red"]])
    first = torch.cat([prefix, lm.embed(torch.tensor(lm.tokenize(["Q: what colour? A:"])[0]))])
    second = lm.embed(torch.tensor(lm.tokenize(["a red"])[0]))
    assert embeds.shape == (2, first.shape[0], lm.hidden_size)
    assert torch.equal(embeds[0], first)
    pad = first.shape[0] - second.shape[0]
    assert torch.equal(embeds[1, pad:], second) and embeds[1, :pad].eq(0).all()
    assert mask[1].tolist() == [0] * pad + [1] * second.shape[0] and mask[0].eq(1).all()


def test_captions_are_generated_after_the_prompt_and_batch_independent(lm_dirs):
    model = features_model(lm_dirs["gpt2"], num_prefix_tokens=2)
    features = torch.randn(3, FEATURE_DIM) * 5
    config = GenerationConfig(max_new_tokens=8)
    captions = caption_images(model, {"image_features": features}, prompt="A picture of", config=config)
    prefix = model.image_prefix({"image_features": features})
    for row in range(3):
        embeds, mask = build_prompt_embeds(model.lm, [[prefix[row], "A picture of"]])
        expected = first_line(model.lm.decode(generate(model.lm, embeds, mask, config)[0]))
        assert captions[row] == expected
        alone = caption_images(model, {"image_features": features[row : row + 1]}, config=config)
        assert alone == [captions[row]]
    assert len(set(captions)) > 1  # different images, different captions


def test_answer_questions_embeds_features_images_and_text(lm_dirs, encoder_spec):
    from PIL import Image

    model = Limber.build(LimberConfig(encoder=encoder_spec, lm=str(lm_dirs["gpt2"]), num_prefix_tokens=2))
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    features = model.encoder(model.encoder.preprocess(image)[None])[0]
    config = GenerationConfig(max_new_tokens=5)
    with_image = [image, "Q: what colour? A:"]
    with_features = [features, "Q: what colour? A:"]
    blind = ["Q: what colour? A:"]
    answers = answer_questions(model, [with_image, with_features, blind], config)
    assert answers[0] == answers[1]
    prefix = model.image_prefix({"image_features": features[None]})[0]
    for prompt, answer in zip(([prefix, "Q: what colour? A:"], blind), (answers[0], answers[2])):
        embeds, mask = build_prompt_embeds(model.lm, [prompt])
        assert answer == first_line(model.lm.decode(generate(model.lm, embeds, mask, config)[0]))
    with pytest.raises(TypeError, match="prompt segment"):
        answer_questions(model, [[3.5, "Q:"]], config)


@pytest.mark.parametrize("lm_name", ["gpt2", "bos"])
def test_image_context_is_what_training_puts_before_the_caption(lm_dirs, lm_name):
    model = features_model(lm_dirs[lm_name], num_prefix_tokens=3)
    features = torch.randn(2, FEATURE_DIM)
    with torch.no_grad():
        context = model.image_context(features)  # (B, [1+]P, H)
        inputs = model.training_inputs(model.image_prefix({"image_features": features}), [[5, 6], [7]])
    front = 1 + 3 if model.lm.prepend_bos else 3
    assert context.shape == (2, front, model.lm.hidden_size)
    assert torch.equal(context, inputs.inputs_embeds[:, :front])
