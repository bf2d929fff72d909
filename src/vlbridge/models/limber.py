"""LiMBeR: a frozen image encoder and a frozen causal LM joined by one trained linear projector.

    config = LimberConfig(encoder="timm:resnet18@weights.safetensors", lm="", num_prefix_tokens=4)
    model = Limber.build(config, device="cpu")        # encoder + projector + FrozenLM
    out = model(image_features=f, input_ids=[[...], ...])   # LimberOutput: loss, logits, loss_sum, ...
    model.save("runs/limber/final")                   # projector.safetensors + limber.yaml
    model = Limber.load("runs/limber/final")          # rebuilds encoder and LM from the config

Training sequence per image: [P(features) ; caption tokens ; EOS], right-padded to the batch's
longest caption; labels are -100 on the prefix and the padding, so the loss is the LM's mean
cross-entropy over caption tokens and EOS. (LMs whose tokenizer starts every text with BOS,
see `FrozenLM.prepend_bos`, get that BOS embedding first, also with label -100.)

`Limber.forward` is the one place that loss is computed (training and evaluation alike). Batch
contract:
- images: `pixel_values` (B, 3, H, W) through the encoder, or cached `image_features` (B, D) /
  (B, N, D); exactly one of them.
- `input_ids`: the text after the image prefix, as a list of B token-id lists (ragged), or a
  (B, T) LongTensor with `attention_mask` (B, T) whose 1s mark the tokens to keep (padding on
  either side is cut out; no mask = every position is a token). EOS is appended to every
  sequence that does not already end with it.
- `labels` (optional): same layout as `input_ids`, -100 where a token is not scored (e.g. a
  question before its answer); the appended EOS is scored. None scores every token + EOS.
The output carries the mean `loss`, the `logits`, and `loss_sum` / `num_tokens` so a
distributed trainer can normalise by the global token count; `per_sequence=True` adds each
row's token-loss sum and token count (per-caption NLL).

The encoder is optional: with cached features (`image_features` in the batch, from
`vlbridge.data.features.FeatureStore`) the model needs only `feature_dim` and `pooled`.

A checkpoint is a directory with the projector weights (`projector.safetensors`) and the
resolved config (`limber.yaml`), kilobytes to megabytes; the LM and encoder weights are never
copied, the config names them. Generation prompts (captions, few-shot VQA) are lists of
segments turned into left-padded embeddings by `build_prompt_embeds`; the few-shot VQA
prompt layout itself lives in `vlbridge.evaluation.vqa`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers.utils import ModelOutput

from vlbridge.config import from_dict, read_mapping, save_config
from vlbridge.data.records import TarMember, open_image
from vlbridge.errors import UserError
from vlbridge.models.lm import FrozenLM, default_lm_path
from vlbridge.models.projector import LinearProjector
from vlbridge.runtime import autocast

log = logging.getLogger(__name__)

WEIGHTS_FILE = "projector.safetensors"
TUNED_ENCODER_FILE = "encoder.safetensors"  # a tuned encoder's weights, beside the projector
CONFIG_FILE = "limber.yaml"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# A prompt segment: text (str), image features (Tensor (D,) or (N, D)) or an image (Path, bytes, PIL).
Segment = Union[str, torch.Tensor, Path, bytes, Image.Image]


@dataclass
class LimberConfig:
    """What a LiMBeR model is made of; saved resolved next to the projector weights."""

    encoder: str = ""  # image-encoder spec for vlbridge.models.registry.build_encoder ("" = features given by the caller)
    lm: str = ""  # HF causal-LM directory ("" = the embedded SmolLM2-135M-Instruct)
    num_prefix_tokens: int = 4  # k soft-prompt vectors from pooled features (grid features give N)
    pooled: bool = True  # True: (B, D) features -> k tokens; False: (B, N, D) grid -> N tokens (from the encoder)
    dropout: float = 0.0  # dropout on the projected prefix vectors (after the linear map, as LiMBeR)
    prompt: str = "A picture of"  # captioning prompt placed after the image prefix
    feature_dim: int = 0  # D, resolved from the encoder (0 = not resolved yet)
    hidden_size: int = 0  # H, resolved from the LM (0 = not resolved yet)
    encoder_id: str = ""  # resolved encoder identity (weights hash); checked when loading
    lm_name: str = ""  # resolved LM name, for reports
    lm_dtype: str = "float32"  # LM weight dtype: float32 | bfloat16 | float16
    input_scale: float = 1.0  # the projector multiplies features by this first (training's feature_scale)


@dataclass
class LimberOutput(ModelOutput):
    """What `Limber.forward` returns (a transformers ModelOutput: attribute, key and tuple access)."""

    loss: torch.Tensor | None = None  # () mean next-token cross-entropy over the scored tokens
    logits: torch.Tensor | None = None  # (B, L, V) LM logits over [BOS? ; prefix ; text]
    loss_sum: torch.Tensor | None = None  # () float32 sum of the scored tokens' cross-entropies (graph kept)
    num_tokens: torch.Tensor | None = None  # () long: how many tokens were scored
    sequence_loss_sums: torch.Tensor | None = None  # (B,) float32 per-sequence sums (per_sequence=True only)
    sequence_num_tokens: torch.Tensor | None = None  # (B,) long per-sequence scored tokens (per_sequence=True only)


@dataclass
class LimberInputs:
    """The LM's inputs for image prefix + text: what `Limber.training_inputs` builds."""

    inputs_embeds: torch.Tensor  # (B, L, H), L = [1 +] P + T
    attention_mask: torch.Tensor  # (B, L) long, 0 on padding
    labels: torch.Tensor  # (B, L) long, the token each position is (not predicts); -100 = not scored


def shifted_token_loss(logits: torch.Tensor, labels: torch.Tensor, per_sequence: bool = False):
    """Next-token cross-entropy of positions whose label is not -100: (sum, count), or (B,) each per sequence.

    Position t predicts label t+1: the labels are shifted left (with -100 at the end) instead of
    slicing the logits, which would copy the (B, L, V) tensor forward and backward.
    """
    labels = labels.to(logits.device)
    targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)  # (B, L)
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()  # (B*L, V), a view for float32 logits
    if per_sequence:
        losses = F.cross_entropy(flat_logits, targets.reshape(-1), ignore_index=-100, reduction="none")  # (B*L,)
        return losses.view(targets.shape).sum(dim=1), (targets != -100).sum(dim=1)  # (B,), (B,)
    loss_sum = F.cross_entropy(flat_logits, targets.reshape(-1), ignore_index=-100, reduction="sum")
    return loss_sum, (targets != -100).sum()


def resolve_lm_path(spec: str) -> Path:
    """The LM directory named by a config ("" -> the embedded default)."""
    return default_lm_path() if not spec else Path(spec)


def _load_encoder(spec: str, device):
    from vlbridge.models.registry import build_encoder  # lazy: the registry pulls in every backbone library

    return build_encoder(spec, device=str(device))


class Limber(nn.Module):
    """encoder? -> LinearProjector -> FrozenLM; only the projector trains."""

    def __init__(self, config: LimberConfig, projector: LinearProjector, lm: FrozenLM, encoder=None):
        super().__init__()
        self.config = config  # resolved LimberConfig
        self.encoder = encoder  # ImageEncoder or None (cached features)
        self.projector = projector
        self.lm = lm

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls, config: LimberConfig, device="cpu", encoder=None, lm: FrozenLM | None = None, with_encoder: bool = True
    ) -> "Limber":
        """Resolve `config` against the encoder and LM (built here unless given) and make a fresh projector."""
        device = torch.device(device)
        if lm is None:
            if config.lm_dtype not in DTYPES:
                raise UserError(f"lm_dtype must be one of {', '.join(DTYPES)}, got {config.lm_dtype!r}")
            lm = FrozenLM.from_pretrained(resolve_lm_path(config.lm), device=device, dtype=DTYPES[config.lm_dtype])
        if encoder is None and with_encoder and config.encoder:
            encoder = _load_encoder(config.encoder, device)
        config = _resolve(config, encoder, lm)
        projector = LinearProjector(
            config.feature_dim, config.hidden_size, config.num_prefix_tokens, config.pooled, config.dropout,
            config.input_scale,
        )
        return cls(config, projector.to(device), lm, encoder)

    @property
    def device(self) -> torch.device:
        return self.projector.proj.weight.device

    @property
    def num_prefix_tokens(self) -> int:
        """P: image tokens per image (k when pooled, the encoder's N for grid features)."""
        return self.config.num_prefix_tokens

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimiser should see (the projector's; an unfrozen encoder's too)."""
        params = list(self.projector.parameters())
        if self.encoder is not None:
            params += [p for p in self.encoder.parameters() if p.requires_grad]
        return params

    def train(self, mode: bool = True) -> "Limber":
        """Projector follows `mode`; the LM always stays eval; a frozen encoder stays eval too."""
        self.training = mode
        self.projector.train(mode)
        self.lm.train(False)
        if self.encoder is not None:
            tuned = any(p.requires_grad for p in self.encoder.parameters())
            self.encoder.train(mode and tuned)
        return self

    # ------------------------------------------------------------------ forward pieces
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encoder features of pixels (B, 3, H, W) -> (B, D) or (B, N, D); no graph if the encoder is frozen."""
        if self.encoder is None:
            raise UserError(
                "this LiMBeR model has no image encoder (config.encoder is empty); give image_features instead of pixels"
            )
        tuned = any(p.requires_grad for p in self.encoder.parameters())
        with torch.set_grad_enabled(tuned and torch.is_grad_enabled()):
            return self.encoder(pixel_values.to(self.device))

    def image_prefix(self, batch: dict) -> torch.Tensor:
        """Soft prompt of a batch: from batch["image_features"] or batch["pixel_values"] -> (B, P, H)."""
        if batch.get("image_features") is not None:
            features = batch["image_features"]
        elif batch.get("pixel_values") is not None:
            features = self.encode(batch["pixel_values"])
        else:
            raise ValueError(f"batch needs 'image_features' or 'pixel_values', got keys {sorted(batch)}")
        prefix = self.projector(features.to(self.device))  # (B, P, H)
        return prefix.to(self.lm.dtype)

    def image_context(self, features: torch.Tensor) -> torch.Tensor:
        """What the LM reads before a caption: (B, D) image features -> (B, [1+]P, H) ([BOS] + soft prompt)."""
        prefix = self.image_prefix({"image_features": features})  # (B, P, H)
        return torch.cat([self._front_embeds(features.shape[0]), prefix.to(self.lm.dtype)], dim=1)

    def _front_embeds(self, batch_size: int) -> torch.Tensor:
        """(B, 1, H) BOS embedding for LMs that expect one, else (B, 0, H)."""
        if not self.lm.prepend_bos:
            return torch.zeros(batch_size, 0, self.lm.hidden_size, device=self.device, dtype=self.lm.dtype)
        bos = torch.full((batch_size, 1), self.lm.bos_token_id, dtype=torch.long, device=self.device)
        return self.lm.embed(bos)  # (B, 1, H)

    def training_inputs(self, prefix: torch.Tensor, caption_ids: Sequence[Sequence[int]],
                        caption_labels: Sequence[Sequence[int]] | None = None) -> LimberInputs:
        """inputs_embeds (B, L, H), attention_mask and labels for texts after the prefix.

        Each text gets EOS appended (unless it already ends with EOS); texts are right-padded to
        the longest; labels are -100 on the prefix and the padding. `caption_labels` (one list
        per text, as long as its ids; -100 = not scored) replace the ids as labels; the appended
        EOS is scored either way.
        """
        batch_size = prefix.shape[0]
        if len(caption_ids) != batch_size:
            raise ValueError(f"got {len(caption_ids)} captions for a prefix batch of {batch_size}")
        targets = self.caption_targets(caption_ids)
        scored = targets if caption_labels is None else self._label_rows(caption_ids, caption_labels, targets)
        text_len = max(len(ids) for ids in targets)
        tokens = torch.full((batch_size, text_len), self.lm.pad_token_id, dtype=torch.long)  # (B, T)
        text_labels = torch.full((batch_size, text_len), -100, dtype=torch.long)  # (B, T)
        text_mask = torch.zeros(batch_size, text_len, dtype=torch.long)  # (B, T)
        for row, (ids, row_labels) in enumerate(zip(targets, scored)):
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            text_labels[row, : len(ids)] = torch.tensor(row_labels, dtype=torch.long)
            text_mask[row, : len(ids)] = 1
        tokens, text_mask, text_labels = tokens.to(self.device), text_mask.to(self.device), text_labels.to(self.device)
        front = torch.cat([self._front_embeds(batch_size), prefix.to(self.lm.dtype)], dim=1)  # (B, [1+]P, H)
        inputs_embeds = torch.cat([front, self.lm.embed(tokens)], dim=1)  # (B, [1+]P+T, H)
        front_ones = text_mask.new_ones(batch_size, front.shape[1])
        attention_mask = torch.cat([front_ones, text_mask], dim=1)  # (B, [1+]P+T)
        labels = torch.cat([torch.full_like(front_ones, -100), text_labels], dim=1)  # (B, [1+]P+T)
        return LimberInputs(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels)

    def caption_targets(self, caption_ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """The tokens each caption is scored on: its ids with EOS appended (unless already last)."""
        eos = self.lm.eos_token_id
        return [list(ids) if list(ids[-1:]) == [eos] else [*ids, eos] for ids in caption_ids]

    def _label_rows(self, caption_ids, caption_labels, targets) -> list[list[int]]:
        """Given per-token labels, extended by the EOS that `caption_targets` appended."""
        if len(caption_labels) != len(caption_ids):
            raise ValueError(f"got {len(caption_labels)} label rows for {len(caption_ids)} input_ids rows")
        rows = []
        for ids, row_labels, target in zip(caption_ids, caption_labels, targets):
            if len(row_labels) != len(ids):
                raise ValueError(f"a labels row has {len(row_labels)} entries for {len(ids)} input_ids")
            rows.append([*row_labels, *target[len(ids):]])
        return rows

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        input_ids: torch.Tensor | Sequence[Sequence[int]] | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | Sequence[Sequence[int]] | None = None,
        per_sequence: bool = False,
    ) -> LimberOutput:
        """Score texts after their images: LM cross-entropy over the text tokens + EOS (module docstring).

        Give `pixel_values` (B, 3, H, W) or `image_features` (B, D) / (B, N, D), and `input_ids`
        (B token lists, or a (B, T) tensor with `attention_mask`); `labels` in the layout of
        `input_ids` (-100 = not scored) narrow what is scored. `per_sequence=True` also returns
        each row's loss sum and token count.
        """
        if (pixel_values is None) == (image_features is None):
            raise ValueError("Limber.forward needs exactly one of pixel_values and image_features")
        if input_ids is None:
            raise ValueError("Limber.forward needs input_ids (the text after the image prefix)")
        caption_ids = token_rows(input_ids, attention_mask)
        caption_labels = None if labels is None else token_rows(labels, attention_mask)
        with autocast(self.device):
            prefix = self.image_prefix({"pixel_values": pixel_values, "image_features": image_features})  # (B, P, H)
            inputs = self.training_inputs(prefix, caption_ids, caption_labels)
            logits = self.lm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask).logits  # (B, L, V)
        labels = inputs.labels.to(logits.device)  # an LM placed by device_map returns logits on its last device
        loss_sum, num_tokens = shifted_token_loss(logits, labels)
        rows = shifted_token_loss(logits, labels, per_sequence=True) if per_sequence else (None, None)
        return LimberOutput(loss=loss_sum / num_tokens, logits=logits, loss_sum=loss_sum, num_tokens=num_tokens,
                            sequence_loss_sums=rows[0], sequence_num_tokens=rows[1])

    # ------------------------------------------------------------------ prompts
    def embed_segments(self, prompts: Sequence[Sequence[Segment]]) -> list[list]:
        """Replace every image / feature segment of each prompt with its (P, H) prefix; text stays."""
        feature_rows = []
        for prompt in prompts:
            for segment in prompt:
                if not isinstance(segment, str):
                    feature_rows.append(self._segment_features(segment))
        prefixes = iter(self.image_prefix({"image_features": torch.stack(feature_rows)}) if feature_rows else [])
        return [[segment if isinstance(segment, str) else next(prefixes) for segment in prompt] for prompt in prompts]

    def _segment_features(self, segment: Segment) -> torch.Tensor:
        """Features (D,) or (N, D) of one image segment (given as features or as an image)."""
        if isinstance(segment, torch.Tensor):
            return segment.to(self.device)
        if isinstance(segment, (Path, bytes, bytearray, Image.Image, TarMember)):
            if self.encoder is None:
                raise UserError("an image prompt segment needs an image encoder, but this LiMBeR model has none")
            pixels = self.encoder.preprocess(open_image(segment))[None]  # (1, 3, H, W)
            return self.encode(pixels)[0]
        raise TypeError(f"a prompt segment must be str, Tensor, Path, bytes or PIL image, got {type(segment).__name__}")

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> Path:
        """Write projector.safetensors + limber.yaml into directory `path` (atomically); returns it."""
        from vlbridge.io import atomic_save_safetensors

        path = Path(path)
        atomic_save_safetensors(path / WEIGHTS_FILE, self.projector.state_dict(), metadata={"format": "vlbridge-limber"})
        save_config(self.config, path / CONFIG_FILE)
        log.info("saved LiMBeR projector to %s", path)
        return path

    @classmethod
    def load(
        cls, path: str | Path, device="cpu", with_encoder: bool = True, lm: FrozenLM | None = None, encoder=None
    ) -> "Limber":
        """Rebuild a saved model: config -> encoder (unless with_encoder=False) + LM -> projector weights."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(path)
        if folder.is_file() and folder.name in (WEIGHTS_FILE, CONFIG_FILE):
            folder = folder.parent
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise UserError(f"{path} is not a LiMBeR checkpoint: expected a directory with {CONFIG_FILE} and {WEIGHTS_FILE}")
        config = from_dict(LimberConfig, read_mapping(folder / CONFIG_FILE), where="limber.")
        model = cls.build(config, device=device, encoder=encoder, lm=lm, with_encoder=with_encoder)
        try:
            state = load_file(str(folder / WEIGHTS_FILE), device="cpu")
        except (SafetensorError, OSError) as err:
            raise UserError(f"cannot read projector weights {folder / WEIGHTS_FILE}: {err}") from err
        expected = {name: tuple(t.shape) for name, t in model.projector.state_dict().items()}
        found = {name: tuple(t.shape) for name, t in state.items()}
        if found != expected:
            raise UserError(f"projector weights in {folder} do not fit its config: expected {expected}, found {found}")
        model.projector.load_state_dict(state)
        return model


def load_trained_limber(model_dir: str | Path, device: str | torch.device = "cpu", with_encoder: bool = True):
    """A saved Limber (`run_dir/model` or `run_dir`), with its tuned encoder weights when present.

    with_encoder=False skips the image encoder (blind VQA, cached features).
    """
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if (model_dir / "model").is_dir():
        model_dir = model_dir / "model"
    model = Limber.load(model_dir, device=device, with_encoder=with_encoder)
    tuned = model_dir / TUNED_ENCODER_FILE
    if with_encoder and tuned.is_file():
        if model.encoder is None:
            raise UserError(f"{model_dir} holds tuned encoder weights but its config names no encoder")
        model.encoder.load_state_dict(load_file(str(tuned), device=str(device)))
    return model


def _resolve(config: LimberConfig, encoder, lm: FrozenLM) -> LimberConfig:
    """Fill feature_dim / pooled / encoder_id from the encoder and hidden_size / lm_name from the LM."""
    if config.hidden_size and config.hidden_size != lm.hidden_size:
        raise UserError(f"checkpoint was trained for a {config.hidden_size}-d LM, but {lm.name} is {lm.hidden_size}-d")
    config = replace(config, hidden_size=lm.hidden_size, lm_name=config.lm_name or lm.name)
    if encoder is None:
        if config.feature_dim <= 0:
            raise UserError("LiMBeR needs an image encoder (config.encoder) or a known feature_dim for cached features")
        return config
    if config.feature_dim and config.feature_dim != encoder.feature_dim:
        raise UserError(
            f"projector expects {config.feature_dim}-d features, but encoder {encoder.encoder_id} gives {encoder.feature_dim}-d"
        )
    if config.encoder_id and config.encoder_id != encoder.encoder_id:
        log.warning("encoder %s differs from the one the projector was trained on (%s)", encoder.encoder_id, config.encoder_id)
    num_prefix = config.num_prefix_tokens if encoder.pooled else encoder.num_tokens
    return replace(
        config,
        feature_dim=encoder.feature_dim,
        pooled=bool(encoder.pooled),
        num_prefix_tokens=num_prefix,
        encoder_id=encoder.encoder_id,
    )


def caption_id_lists(batch: dict) -> list[list[int]]:
    """batch["input_ids"] as lists: a list of lists as is; a padded tensor cut by batch["attention_mask"]."""
    input_ids = batch.get("input_ids")
    if input_ids is None:
        raise ValueError(f"batch needs 'input_ids' (caption token ids), got keys {sorted(batch)}")
    return token_rows(input_ids, batch.get("attention_mask"))


def token_rows(values: torch.Tensor | Sequence[Sequence[int]], attention_mask: torch.Tensor | None = None) -> list[list[int]]:
    """Rows of token ids (or labels) as lists: lists as they are; a (B, T) tensor cut by `attention_mask` (B, T)."""
    if not isinstance(values, torch.Tensor):
        return [list(map(int, row)) for row in values]
    if attention_mask is None:
        return values.tolist()
    if tuple(attention_mask.shape) != tuple(values.shape):
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(values.shape)}")
    return [row[row_mask.bool()].tolist() for row, row_mask in zip(values.cpu(), attention_mask.cpu())]


def build_prompt_embeds(lm: FrozenLM, rows: Sequence[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded generation prompts from segment lists -> inputs_embeds (B, L, H), attention_mask (B, L).

    A segment is a (P, H) tensor of image-prefix embeddings, a str (tokenized without special
    tokens; consecutive strings are joined first) or a list of token ids. LMs that expect a BOS
    get it first. Padding positions hold zeros and attention 0.
    """
    sequences = [embed_prompt(lm, row) for row in rows]  # each (L_i, H)
    length = max(seq.shape[0] for seq in sequences)
    inputs_embeds = torch.zeros(len(sequences), length, lm.hidden_size, device=lm.device, dtype=lm.dtype)
    attention_mask = torch.zeros(len(sequences), length, dtype=torch.long, device=lm.device)
    for row, seq in enumerate(sequences):
        inputs_embeds[row, length - seq.shape[0] :] = seq
        attention_mask[row, length - seq.shape[0] :] = 1
    return inputs_embeds, attention_mask


def embed_prompt(lm: FrozenLM, segments: Sequence, bos: bool = True) -> torch.Tensor:
    """One prompt's segments -> (L, H) embeddings (see `build_prompt_embeds` for segment kinds).

    `bos=False` leaves out the BOS of LMs that expect one: for the continuation of a prompt
    whose start (with its BOS) was run before. An empty result is (0, H) only when bos=False.
    """
    pieces: list[torch.Tensor] = []
    if lm.prepend_bos and bos:
        pieces.append(lm.embed(torch.tensor([lm.bos_token_id])))
    for segment in _join_texts(segments):
        if isinstance(segment, torch.Tensor):
            if segment.dim() != 2 or segment.shape[-1] != lm.hidden_size:
                raise ValueError(f"image prefix segment must be (P, {lm.hidden_size}), got {tuple(segment.shape)}")
            pieces.append(segment.to(lm.device, lm.dtype))
        else:
            ids = lm.tokenize([segment])[0] if isinstance(segment, str) else list(segment)
            if ids:
                pieces.append(lm.embed(torch.tensor(ids, dtype=torch.long)))
    if not pieces:
        if not bos:
            return torch.zeros(0, lm.hidden_size, device=lm.device, dtype=lm.dtype)
        raise ValueError("a generation prompt needs at least one image or text token")
    return torch.cat(pieces, dim=0)


def _join_texts(segments: Sequence) -> list:
    """Merge consecutive str segments so text is tokenized as one piece."""
    joined: list = []
    for segment in segments:
        if isinstance(segment, str) and joined and isinstance(joined[-1], str):
            joined[-1] += segment
        else:
            joined.append(segment)
    return joined

