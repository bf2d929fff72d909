"""`FrozenLM`: a frozen Hugging Face causal language model with its tokenizer.

LiMBeR never trains the language model. `FrozenLM` wraps (does not subclass) any
`AutoModelForCausalLM` directory saved with `save_pretrained` (GPT-2, GPT-J, OPT, Llama /
SmolLM2, ...): every parameter has `requires_grad=False`, and the model stays in eval mode even
when a parent module calls `.train()` (dropout in the LM would make the soft prompt's target
move). Gradients still flow *through* it to the inputs_embeds, which is what trains the
projector.

    lm = FrozenLM.from_pretrained(default_lm_path())           # the embedded SmolLM2-135M-Instruct
    ids = lm.tokenize(["a red circle"], add_eos=True)          # [[...token ids..., eos]]
    out = lm(inputs_embeds, attention_mask, labels=labels)     # HF CausalLMOutputWithPast

Tokenization never adds special tokens. Models whose tokenizer puts a BOS in front of every
text (Llama-2 style, OPT) get `prepend_bos=True`: `vlbridge.models.limber` then puts that one
BOS embedding at the very start of each sequence (before the image prefix), where the LM saw it
in pretraining. SmolLM2 and GPT-2 add none.

Loading is local only (`local_files_only=True`): nothing is ever downloaded.

Large LMs (GPT-J-6B class): `from_pretrained(..., device_map="auto")` lets accelerate spread the
layers over the visible devices (and CPU) when the LM does not fit one device; the projector's
prefix goes in on the embedding's device and the loss comes back from the head's.
`enable_activation_checkpointing()` recomputes every decoder layer's activations in the backward
pass instead of keeping them (torch.utils.checkpoint, non-reentrant): weights stay frozen and in
eval mode (HF's own gradient checkpointing only acts in train mode, which would switch dropout
on), the gradient reaching the prefix is the same, and activation memory drops from one set per
layer to one layer's plus the layer inputs.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from pathlib import Path

import torch
from torch import nn

from vlbridge.errors import AssetMissingError, UserError

log = logging.getLogger(__name__)


def default_lm_path() -> Path:
    """Directory of the embedded SmolLM2-135M-Instruct (converted by `make setup`)."""
    from vlbridge import assets  # lazy: the assets module converts GGUF weights on first use

    return Path(assets.smollm2_dir())


class FrozenLM(nn.Module):
    """A causal LM + tokenizer whose weights never change; see the module docstring."""

    def __init__(self, model, tokenizer, name: str = "lm"):
        super().__init__()
        self.model = model  # transformers.PreTrainedModel (AutoModelForCausalLM)
        self.tokenizer = tokenizer  # transformers.PreTrainedTokenizerBase
        self.name = name  # human-readable identity, e.g. the directory name
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.model.eval()
        self.hidden_size = int(self.model.get_input_embeddings().embedding_dim)
        self.eos_token_id = _resolve_eos(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else None
        self.prepend_bos = _tokenizer_prepends_bos(tokenizer)
        forward_args = set(inspect.signature(self.model.forward).parameters)
        self._accepts_position_ids = "position_ids" in forward_args
        self._accepts_logits_to_keep = "logits_to_keep" in forward_args

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu", dtype: torch.dtype = torch.float32,
                        device_map: str | dict | None = None) -> "FrozenLM":
        """Load a local HF causal-LM directory (config.json + weights + tokenizer files).

        `device_map` ("auto", "balanced", a {module: device} dict): placed by accelerate across
        devices instead of moved whole to `device`.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise AssetMissingError(
                f"expected a Hugging Face causal-LM directory with config.json at {path}, found "
                f"{'a directory without config.json' if path.is_dir() else 'nothing'}"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            placement = {"device_map": device_map} if device_map else {}
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, **placement)
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"cannot load a causal LM from {path}: {str(err).splitlines()[0]}") from err
        lm = cls(model, tokenizer, name=path.name)
        if not device_map:
            lm.to(torch.device(device))
        else:
            log.info("LM placed by device_map=%s: %s", device_map, sorted(set(map(str, getattr(model, "hf_device_map", {}).values()))))
        log.info("loaded frozen LM %s (hidden %d, vocab %d)", lm.name, lm.hidden_size, lm.vocab_size)
        return lm

    def enable_activation_checkpointing(self) -> int:
        """Recompute each decoder layer in backward (weights untouched); returns how many layers."""
        layers = decoder_layers(self.model)
        for layer in layers:
            if not getattr(layer, "_vlbridge_checkpointed", False):
                layer.forward = _checkpointed(layer.forward)
                layer._vlbridge_checkpointed = True
        log.info("activation checkpointing on %d decoder layers of %s", len(layers), self.name)
        return len(layers)

    # ------------------------------------------------------------------ module behaviour
    def train(self, mode: bool = True) -> "FrozenLM":
        """Stay in eval mode whatever a parent asks: the LM is frozen, dropout included."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: list[str], add_eos: bool = False) -> list[list[int]]:
        """Token ids of each text, no special tokens added (plus EOS at the end if `add_eos`)."""
        if isinstance(texts, str):
            raise TypeError(f"tokenize expects a list of strings, got the string {texts!r}")
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [list(row) + [self.eos_token_id] if add_eos else list(row) for row in ids]

    def decode(self, token_ids: list[int]) -> str:
        """Text of `token_ids` with special tokens (EOS, pad) left out."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    @functools.cached_property
    def newline_token_ids(self) -> frozenset[int]:
        """Ids of every vocabulary token whose text contains a newline (generation stops there)."""
        vocab = len(self.tokenizer)
        texts = self.tokenizer.batch_decode([[i] for i in range(vocab)], skip_special_tokens=False)
        return frozenset(i for i, text in enumerate(texts) if "\n" in text and i < self.vocab_size)

    # ------------------------------------------------------------------ tensors
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids: (B, T) -> (B, T, H)."""
        return self.model.get_input_embeddings()(input_ids.to(self.device))

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ):
        """Run the LM on embeddings (B, T, H); HF computes the shifted CE loss when `labels` are given.

        `attention_mask` (B, T_past + T) is 1 on real tokens; None means no padding anywhere.

        `past_key_values` is the HF cache object from a previous call (returned as `.cache`);
        `position_ids` (B, T) are needed with left padding; `logits_to_keep=1` computes the
        vocabulary projection for the last position only (generation).
        """
        kwargs = {}
        if position_ids is not None and self._accepts_position_ids:
            kwargs["position_ids"] = position_ids
        if logits_to_keep and self._accepts_logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        return self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            labels=labels,
            cache=past_key_values,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )

    def parameter_hash(self) -> str:
        """sha256 over every parameter's name, dtype, shape and bytes (changes if any weight does)."""
        digest = hashlib.sha256()
        for name, parameter in sorted(self.model.named_parameters(), key=lambda item: item[0]):
            tensor = parameter.detach().cpu().contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return digest.hexdigest()


def decoder_layers(model) -> nn.ModuleList:
    """The ModuleList of transformer blocks (model.layers, transformer.h, decoder.layers, ...)."""
    count = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise UserError(f"cannot find the {count} decoder layers of {type(model).__name__} for activation checkpointing")


def _checkpointed(forward):
    """`forward` run under torch.utils.checkpoint whenever a gradient is being recorded."""
    from torch.utils.checkpoint import checkpoint

    @functools.wraps(forward)
    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def _resolve_eos(model, tokenizer) -> int:
    """EOS id from the tokenizer, else from the model config; a UserError if neither has one."""
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
    if eos is None:
        raise UserError("the language model has no EOS token (neither its tokenizer nor its config names one)")
    return int(eos)


def _tokenizer_prepends_bos(tokenizer) -> bool:
    """True when the tokenizer puts BOS in front of plain text by default (Llama-2, OPT)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos
