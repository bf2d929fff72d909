"""Text generation from soft prompts through Hugging Face `generate`: greedy, beam search, nucleus sampling.

    config = GenerationConfig(strategy="beam", num_beams=3)
    token_lists = generate(lm, inputs_embeds, attention_mask, config)   # one list of ids per row
    captions = caption_images(limber, batch)                           # "a red circle above ..."
    answers = answer_questions(limber, prompts, config)                # first line, stripped

Prompts are batched with LEFT padding (`build_prompt_embeds` makes them) and decoded by
`lm.model.generate(inputs_embeds=..., attention_mask=...)` with the settings of a vlbridge
`GenerationConfig` spelled out in full (`hf_generation_config`), so nothing in an LM's own
generation_config.json (sampling defaults, repetition penalties, top-k) changes what is decoded,
and HF has nothing to warn about per call. Streaming one prompt: `vlbridge.models.generation_stream`.

The stop tokens are HF's `eos_token_id` list: EOS and, with `stop_at_newline`, every token whose
text contains a newline. A row stops at its first stop token (HF pads it while other rows go
on); beam search treats every stop token as HF treats EOS (a hypothesis ends there). The
returned ids end at that stop token: EOS is dropped, a newline-bearing token is kept (it may
carry text before the newline, e.g. ".\\n"); `first_line(lm.decode(ids))` gives the text.

Nucleus sampling is HF's TopPLogitsWarper (after the temperature): it keeps the SMALLEST set of
most-likely tokens whose cumulative probability reaches top_p (the published LiMBeR code kept
the complement of that set by mistake). HF samples from torch's global RNG, so a sampled call
seeds it with `config.seed` inside `torch.random.fork_rng`: the same seed and batch give the same
text (a row's draws depend on the rows beside it, which share the RNG), and the caller's RNG
state is left as it was. Sampled calls take a lock, one at a time, because that RNG is shared
by every thread of the process.

The hand-written KV-cache decoder this replaced measured 1.01-1.20x HF `generate`'s speed at
1 thread and 0.89-1.11x at 2 on SmolLM2 (docs/BENCHMARKS.md, "Caption generation"), short of
the 1.3x at both that would justify keeping ~400 lines that re-implement HF's search rules.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from vlbridge.errors import UserError
from vlbridge.models.generation_strategies import STRATEGIES
from vlbridge.runtime import autocast

if TYPE_CHECKING:
    import transformers

    from vlbridge.models.limber import Limber, Segment
    from vlbridge.models.lm import FrozenLM

log = logging.getLogger(__name__)

# HF settings fixed on every call, so an LM's generation_config.json (Llama-2: temperature 0.6 /
# top_p 0.9; Qwen: repetition_penalty 1.05 / top_k 20; ...) cannot change vlbridge's decoding:
# HF fills every setting left None from the model's file. Settings that HF reads only when
# sampling (or only with beams) are given only then; HF warns about them otherwise.
NEUTRAL_HF_SETTINGS = dict(
    repetition_penalty=1.0,  # no repetition penalty
    encoder_repetition_penalty=1.0,  # (encoder-decoder only) none
    no_repeat_ngram_size=0,  # n-grams may repeat
    encoder_no_repeat_ngram_size=0,  # (encoder-decoder only) none
    num_return_sequences=1,  # one output per prompt row
    guidance_scale=1.0,  # no classifier-free guidance
    renormalize_logits=False,  # scores as the processors leave them
    remove_invalid_values=False,  # no nan/inf scrubbing
    use_cache=True,  # KV cache (HF requires it with inputs_embeds)
    return_dict_in_generate=False,  # a plain (B, T) tensor of new tokens
    output_scores=False,  # no per-step scores kept
)
NEUTRAL_HF_SAMPLING_SETTINGS = dict(
    top_k=0,  # no top-k cut (HF's own default is 50)
    min_p=0.0,  # no min-p cut
    typical_p=1.0,  # no typical sampling
    epsilon_cutoff=0.0,  # no epsilon sampling
    eta_cutoff=0.0,  # no eta sampling
)


@dataclass
class GenerationConfig:
    """How to decode; defaults follow the LiMBeR paper's captioning setup."""

    strategy: str = "greedy"  # "greedy" | "beam" | "sample"
    max_new_tokens: int = 30  # at most this many generated tokens per row
    num_beams: int = 3  # beam width (strategy "beam")
    length_penalty: float = 1.0  # beam score = sum log p / length**length_penalty (HF semantics)
    early_stopping: bool | str = False  # beam stop rule, HF semantics: True, False or "never"
    top_p: float = 0.9  # nucleus mass (strategy "sample"); 1.0 keeps every token
    temperature: float = 1.0  # logits are divided by this before sampling
    stop_at_newline: bool = True  # a token containing "\n" ends the row (EOS always does)
    seed: int = 0  # seed of the sampling RNG (strategy "sample")

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(f"generation strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.strategy == "beam" and self.num_beams < 1:
            raise UserError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.early_stopping not in (True, False, "never"):
            raise UserError(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0.0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")


def stop_token_ids(lm: "FrozenLM", stop_at_newline: bool) -> list[int]:
    """EOS first, then (optionally) every newline-bearing token id, sorted."""
    newline_ids = sorted(lm.newline_token_ids - {lm.eos_token_id}) if stop_at_newline else []
    return [lm.eos_token_id, *newline_ids]


def hf_generation_config(lm: "FrozenLM", config: GenerationConfig, prompt_length: int) -> "transformers.GenerationConfig":
    """The HF GenerationConfig that decodes as `config` says, every decoding setting explicit.

    `prompt_length` is L of the (B, L, H) inputs_embeds.
    """
    from transformers import GenerationConfig as HFGenerationConfig

    settings = dict(
        NEUTRAL_HF_SETTINGS,
        **_length_settings(lm.model.generation_config, config.max_new_tokens, prompt_length),
        do_sample=config.strategy == "sample",
        num_beams=config.num_beams if config.strategy == "beam" else 1,
        eos_token_id=stop_token_ids(lm, config.stop_at_newline),
        pad_token_id=lm.pad_token_id,
    )
    if settings["num_beams"] > 1:
        settings.update(length_penalty=config.length_penalty, early_stopping=config.early_stopping)
    if settings["do_sample"]:
        settings.update(NEUTRAL_HF_SAMPLING_SETTINGS, temperature=config.temperature, top_p=config.top_p)
    return HFGenerationConfig(**settings)


def _length_settings(model_defaults, max_new_tokens: int, prompt_length: int) -> dict:
    """At most max_new_tokens and no minimum, said the way the LM's own generation_config says lengths.

    HF warns on every call when a length is given as max_new_tokens and the model's file gives
    max_length (Llama-2: 4096), or min_new_tokens against min_length; with inputs_embeds,
    max_length counts the prompt too.
    """
    lengths: dict = {}
    if model_defaults.max_length is not None and model_defaults.max_new_tokens is None:
        lengths["max_length"] = prompt_length + max_new_tokens
    else:
        lengths["max_new_tokens"] = max_new_tokens
    if model_defaults.min_length is not None and model_defaults.min_new_tokens is None:
        lengths["min_length"] = 0  # EOS allowed from the first step
    else:
        lengths["min_new_tokens"] = 0  # EOS allowed from the first step (takes precedence over a min_length)
    return lengths


def check_prompt(lm: "FrozenLM", inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int = 0) -> None:
    """ValueError unless inputs_embeds is (B, L, H) and attention_mask a left-padded (B, L); UserError when
    the prompt plus `max_new_tokens` does not fit the LM's positions (it would index past them)."""
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != lm.hidden_size:
        raise ValueError(f"inputs_embeds must be (B, L, {lm.hidden_size}), got {tuple(inputs_embeds.shape)}")
    if tuple(attention_mask.shape) != tuple(inputs_embeds.shape[:2]):
        raise ValueError(
            f"attention_mask must be {tuple(inputs_embeds.shape[:2])} like inputs_embeds, got {tuple(attention_mask.shape)}"
        )
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("prompts must be LEFT-padded: some rows end in padding (attention_mask[:, -1] == 0)")
    limit = max_positions(lm)
    if limit is not None and inputs_embeds.shape[1] + max_new_tokens > limit:
        raise UserError(
            f"the prompt is {inputs_embeds.shape[1]} positions (image prefix, prompt or question and any shots) and "
            f"{max_new_tokens} new tokens were asked for, but the LM reads at most {limit} positions; "
            "shorten the prompt / question, use fewer shots or lower --max-new-tokens"
        )


def max_positions(lm: "FrozenLM") -> int | None:
    """The most positions (prompt + generated tokens) the LM's config allows, or None when it names none."""
    config = getattr(getattr(lm, "model", None), "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


_SAMPLING_LOCK = threading.Lock()  # sampled decodes reseed the process-wide RNG: one at a time


@contextlib.contextmanager
def seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """The global RNG of `device` (and the CPU's) seeded with `seed`; both restored on exit."""
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with _SAMPLING_LOCK, torch.random.fork_rng(devices=cuda_devices):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda_devices:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def run_hf_generate(
    lm: "FrozenLM", inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, config: GenerationConfig, **hf_kwargs
) -> torch.Tensor:
    """HF generate on a checked prompt batch -> new tokens (B, T <= max_new_tokens), padded after a stop.

    `hf_kwargs` go to HF generate as they are (a streamer, stopping_criteria).
    """
    hf_config = hf_generation_config(lm, config, prompt_length=inputs_embeds.shape[1])
    inputs_embeds = inputs_embeds.to(lm.device, lm.dtype)
    attention_mask = attention_mask.to(lm.device)
    rng = seeded_rng(lm.device, config.seed) if config.strategy == "sample" else contextlib.nullcontext()
    with rng:
        return lm.model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, generation_config=hf_config, **hf_kwargs
        )


@torch.no_grad()
def generate(
    lm: "FrozenLM", inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, config: GenerationConfig | None = None
) -> list[list[int]]:
    """Decode every row of a left-padded prompt batch; see the module docstring for the stop rule."""
    config = config or GenerationConfig()
    config.validate()
    check_prompt(lm, inputs_embeds, attention_mask, config.max_new_tokens)
    new_tokens = run_hf_generate(lm, inputs_embeds, attention_mask, config)  # (B, T)
    stop_ids = set(stop_token_ids(lm, config.stop_at_newline))
    return [_cut_at_stop(row, stop_ids, lm.eos_token_id) for row in new_tokens.tolist()]


def _cut_at_stop(token_ids: list[int], stop_ids: set[int], eos_token_id: int) -> list[int]:
    """Ids up to the first stop token (HF pads after it); a final EOS is dropped, a newline token kept."""
    for position, token in enumerate(token_ids):
        if token in stop_ids:
            return token_ids[:position] if token == eos_token_id else token_ids[: position + 1]
    return token_ids


def first_line(text: str) -> str:
    """The text before the first newline, stripped."""
    return text.split("\n", 1)[0].strip()


def caption_images(
    model: "Limber", batch: dict, prompt: str = "A picture of", config: GenerationConfig | None = None
) -> list[str]:
    """One caption per image of `batch` (pixel_values or image_features): <image> prompt -> text."""
    from vlbridge.models.limber import build_prompt_embeds

    config = config or GenerationConfig()
    with torch.no_grad(), autocast(model.device):
        prefix = model.image_prefix(batch)  # (B, P, H)
        rows = [[prefix[i], prompt] if prompt else [prefix[i]] for i in range(prefix.shape[0])]
        inputs_embeds, attention_mask = build_prompt_embeds(model.lm, rows)
        token_lists = generate(model.lm, inputs_embeds, attention_mask, config)
    return [first_line(model.lm.decode(ids)) for ids in token_lists]


def answer_questions(
    model: "Limber", prompts: Sequence[Sequence["Segment"]], config: GenerationConfig | None = None
) -> list[str]:
    """Answer few-shot VQA prompts (lists of image / text segments); each answer is a first line, stripped."""
    from vlbridge.models.limber import build_prompt_embeds

    config = config or GenerationConfig()
    if not prompts:
        return []
    with torch.no_grad(), autocast(model.device):
        rows = model.embed_segments(prompts)
        inputs_embeds, attention_mask = build_prompt_embeds(model.lm, rows)
        token_lists = generate(model.lm, inputs_embeds, attention_mask, config)
    return [first_line(model.lm.decode(ids)) for ids in token_lists]
