"""Benchmark of one LiMBeR training step: cached features vs encoding pixels, and LM compute efficiency.

    .venv/bin/python bench/limber_step.py [--device cpu] [--steps 5] [--encoder efficientnet-lite0]

Setting (the task's reference point): frozen SmolLM2-135M-Instruct (the embedded one; a
random Llama of the same shape when it is not installed), k = 4 prefix vectors, batch 16,
shapes-world captions cut to <= 24 tokens, AdamW on the projector, fp32 on CPU (bf16
autocast on GPU). The step is the real `vlbridge.training.limber.train_step` (through `Limber.forward`).

Printed figures:
1. samples/s with cached features vs with the (frozen) encoder run on pixels every step
   (PIL -> preprocess -> encoder -> projector), and their ratio.
2. achieved GFLOP/s of the frozen LM forward + backward vs this machine's fp32 matmul
   throughput, measured in the same run on a large square torch.matmul. FLOP count:
   forward = 2 * N * T + attention (4 * T_seq^2 * H per layer and sequence), where N counts
   the weights of every Linear layer (the tied LM head included, the embedding lookup not)
   and T the tokens actually computed (batch x padded length). Backward: the LM weights are
   frozen, so only activation gradients are computed: about the forward's FLOPs again
   (no weight gradients). Total ~= 4 * N * T (+ 2x attention). The projector is negligible.
3. peak resident memory of the process (resource.getrusage ru_maxrss), goal <= 4 GB.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlbridge.training import limber_data  # noqa: E402
from vlbridge.runtime import DistEnv  # noqa: E402

BATCH = 16  # images per step
PREFIX_TOKENS = 4  # k
MAX_CAPTION_TOKENS = 24  # captions are cut to this many tokens (EOS comes on top)


def load_lm(device: torch.device):
    """The embedded SmolLM2, or a random Llama with its exact shape."""
    from vlbridge.errors import UserError
    from vlbridge.models.lm import FrozenLM, default_lm_path

    try:
        return FrozenLM.from_pretrained(default_lm_path(), device=device), "SmolLM2-135M-Instruct (embedded)"
    except UserError as err:
        print(f"note: embedded SmolLM2 unavailable ({err}); using a random Llama of the same shape")
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    vocab = {"<|endoftext|>": 0, **{chr(97 + i): i + 1 for i in range(26)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    return FrozenLM(LlamaForCausalLM(config).eval(), tokenizer, name="random-llama-135m").to(device), "random Llama (SmolLM2 shape)"


def matmul_gflops(device: torch.device, size: int = 2048, repeats: int = 6) -> tuple[float, float]:
    """fp32 throughput of a large square matmul on `device`: (GFLOP/s wall, GFLOP per CPU-second), best of `repeats`."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.matmul(a, b)
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        torch.matmul(a, b)
        _sync(device)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, max(time.process_time() - cpu, 1e-9))
    flops = 2 * size**3
    return flops / best_wall / 1e9, flops / best_cpu / 1e9


def linear_weight_count(lm) -> int:
    return sum(m.weight.numel() for m in lm.model.modules() if isinstance(m, torch.nn.Linear))


def step_flops(lm, batch_size: int, seq_len: int) -> float:
    """Forward + activation-only backward FLOPs of the frozen LM on (batch_size, seq_len)."""
    config = lm.model.config
    tokens = batch_size * seq_len
    forward = 2 * linear_weight_count(lm) * tokens + 4 * seq_len**2 * config.hidden_size * config.num_hidden_layers * batch_size
    return 2 * forward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(lm, encoder, device):
    from vlbridge.models.limber import Limber, LimberConfig

    torch.manual_seed(0)
    config = LimberConfig(encoder="", lm="", num_prefix_tokens=PREFIX_TOKENS, pooled=True)
    model = Limber.build(config, device=device, encoder=encoder, lm=lm)
    model.projector.train()
    return model


def time_steps(model, make_batch, steps: int, env: DistEnv):
    """(wall s/step, CPU s/step, padded sequence lengths) over `steps` timed steps after one warm-up."""
    from vlbridge.training import limber
    from vlbridge.training.optim import warmup_cosine

    config = limber.LimberTrainConfig()
    optimizer = limber.build_optimizer(config, model)
    scheduler = warmup_cosine(optimizer, 10, 1000)
    lengths = []
    for step in range(steps + 1):
        if step == 1:
            _sync(env.device)
            wall, cpu = time.perf_counter(), time.process_time()
        batch = make_batch(step)
        pixels = batch.pop("pixel_values", None)
        if pixels is not None:  # the frozen encoder runs here; the step sees its features
            with torch.no_grad():
                batch["image_features"] = model.encoder(pixels)
        float(limber.train_step(model, batch, optimizer, scheduler, config, env))  # reading the loss completes the step
        lengths.append(PREFIX_TOKENS + max(len(ids) for ids in batch["input_ids"]) + 1)
    _sync(env.device)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps, lengths[1:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting (after one warm-up)")
    parser.add_argument("--encoder", default="efficientnet-lite0", help="encoder spec for the pixels-every-step setting")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = DistEnv(device=device)
    from vlbridge.data.shapes import image_text_records
    from vlbridge.models.registry import build_encoder

    lm, lm_name = load_lm(device)
    encoder = build_encoder(args.encoder, device=str(device))
    model = build_model(lm, encoder, device)
    records = image_text_records(BATCH * (args.steps + 1), split="train", seed=0)
    captions = limber_data.tokenize_captions(lm.tokenize, records, MAX_CAPTION_TOKENS)
    batcher = limber_data.CaptionBatcher([len(c) for c in captions], BATCH, seed=0)
    with torch.no_grad():
        pixels = [encoder.preprocess(r.image) for r in records]
        features = torch.cat([encoder(torch.stack(pixels[i : i + 32]).to(device)) for i in range(0, len(pixels), 32)])

    def cached(step):
        return limber_data.make_batch(batcher.samples(step), records, captions, features=features, device=device)

    def on_pixels(step):
        return limber_data.make_batch(batcher.samples(step), records, captions, preprocess=encoder.preprocess, device=device)

    cached_s, cached_cpu, lengths = time_steps(model, cached, args.steps, env)
    pixels_s, pixels_cpu, _ = time_steps(model, on_pixels, args.steps, env)
    peak_wall, peak_cpu = matmul_gflops(device)
    flops = sum(step_flops(lm, BATCH, length) for length in lengths) / len(lengths)
    achieved, achieved_cpu = flops / cached_s / 1e9, flops / cached_cpu / 1e9
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"device {device} ({torch.get_num_threads()} threads), LM {lm_name}, encoder {encoder.encoder_id}")
    print(f"LM Linear weights N = {linear_weight_count(lm) / 1e6:.1f} M; mean padded length {sum(lengths) / len(lengths):.1f}")
    print(f"cached features : {BATCH / cached_s:8.2f} samples/s ({cached_s * 1e3:.0f} ms/step, {cached_cpu:.1f} CPU-s/step)")
    print(f"pixels each step: {BATCH / pixels_s:8.2f} samples/s ({pixels_s * 1e3:.0f} ms/step, {pixels_cpu:.1f} CPU-s/step)")
    print(f"ratio cached / pixels: {pixels_s / cached_s:.2f}x wall, {pixels_cpu / cached_cpu:.2f}x CPU time")
    print(f"LM fwd+bwd: {flops / 1e9:.1f} GFLOP/step -> {achieved:.1f} GFLOP/s; matmul fp32 {peak_wall:.1f} GFLOP/s "
          f"-> {100 * achieved / peak_wall:.0f}% of matmul (goal >= 70%)")
    if device.type == "cpu":
        print(f"per CPU-second (robust to other load on the machine): {achieved_cpu:.1f} vs matmul {peak_cpu:.1f} "
              f"GFLOP/CPU-s -> {100 * achieved_cpu / peak_cpu:.0f}%")
    print(f"peak RSS {rss_gb:.2f} GB (goal <= 4 GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
