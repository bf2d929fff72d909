"""Tests for `scripts/vqa_text_oracle.py`: images become their captions; the bare-LM model answers as LiMBeR does."""

import importlib.util
from pathlib import Path

import torch

from vlbridge.evaluation import vqa
from vlbridge.evaluation.vqa import ImageSegment, TextSegment
from vlbridge.models.generation import GenerationConfig

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vqa_text_oracle.py"


def load_script():
    spec = importlib.util.spec_from_file_location("vqa_text_oracle", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oracle_prompt_puts_each_images_caption_where_the_image_was():
    oracle = load_script()
    prompt = [ImageSegment("a"), TextSegment("Q: x? A: y\n"), ImageSegment("q"), TextSegment("Q: z? A:")]
    captions = {"a": "a red circle", "q": "a blue star"}
    assert oracle.oracle_prompt(prompt, captions) == [
        TextSegment("a red circle\n"), TextSegment("Q: x? A: y\n"), TextSegment("a blue star\n"), TextSegment("Q: z? A:")]


def test_text_only_model_answers_exactly_like_limber_on_text_prompts(tmp_path):
    from helpers.limber_train_helpers import make_tiny_lm

    from vlbridge.models.limber import Limber, LimberConfig

    oracle = load_script()
    torch.manual_seed(0)
    limber = Limber.build(LimberConfig(encoder="", lm=str(make_tiny_lm(tmp_path)), num_prefix_tokens=2,
                                       pooled=True, feature_dim=8)).eval()
    prompts = [[TextSegment("a red circle\n"), TextSegment("Q: what colour is it? A:")],
               [TextSegment("Q: how many shapes are there? A:")]]
    config = GenerationConfig(max_new_tokens=5)
    expected = vqa.answer_prompts(limber, prompts, config, batch_size=2, show=False)
    assert vqa.answer_prompts(oracle.TextOnlyModel(limber.lm), prompts, config, batch_size=2, show=False) == expected
