"""Benchmark: samples/s of vlbridge's CLIP training step vs open_clip's own trainer, same everything.

Both sides train the same open_clip architecture (default vl-tiny-vit) from the same initial
weights on the same synthetic batches (random pixels and token ids), with AdamW, warmup +
cosine, gradient clipping 1.0, fp32 on CPU (bf16 autocast on GPU for both):
- open_clip: `open_clip_train.train.train_one_epoch` itself, driven by a synthetic
  dataloader object (their loop: scheduler, forward, ClipLoss, backward, clip, step, clamp, logs);
- vlbridge: `vlbridge.training.clip.contrastive_step` with the optimizer and scheduler
  `train_clip` builds (`make_optimizer`: fused AdamW), data loading excluded on both sides.
Rounds alternate between the two so machine load hits both alike; the median round of each is
reported and the ratio vlbridge / open_clip printed (goal >= 1.0).

On a GPU each round ends with a device synchronize, and the model FLOP utilisation (MFU) of
both sides is printed: FLOPs of one training step (forward + backward, counted once with
torch.utils.flop_counter on a real batch: matmuls, convolutions, attention) x steps/s, over the
chip's dense bf16 peak (`--peak-tflops`; default from the device name: H100/H200 989.4).

    python bench/clip_train.py [--arch vl-tiny-vit] [--batch-size 128] [--steps 10] [--rounds 3] [--threads N]
    python bench/clip_train.py --arch ViT-B-32 --batch-size 256 --steps 20   # on a GPU: bf16, + MFU
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from types import SimpleNamespace

import torch


def synthetic_batches(model_cfg: dict, batch_size: int, steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    size = model_cfg["vision_cfg"]["image_size"]
    context = model_cfg["text_cfg"]["context_length"]
    return [
        (torch.randn(batch_size, 3, size, size, generator=generator),  # (B, 3, H, W)
         torch.randint(1, 49407, (batch_size, context), generator=generator))  # (B, L)
        for _ in range(steps)
    ]


class SyntheticLoader:
    """What open_clip's train_one_epoch reads from data['train']: .dataloader (+ sizes) and .set_epoch."""

    def __init__(self, batches):
        self.batches = batches
        self.num_batches = len(batches)
        self.num_samples = sum(len(images) for images, _ in batches)

    @property
    def dataloader(self):
        return self

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return iter(self.batches)


PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense bf16 tensor-core peaks


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def step_flops(model, batch: tuple[torch.Tensor, torch.Tensor], device: str) -> int:
    """FLOPs of one forward + backward of the CLIP loss on `batch` (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vlbridge.runtime import autocast
    from vlbridge.training.loss import ClipLoss

    with FlopCounterMode(display=False) as counter:
        with autocast(torch.device(device)):
            out = model(*batch)
            loss = ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def peak_tflops(device: str, given: float | None) -> float | None:
    if given or not device.startswith("cuda"):
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def open_clip_round(model, batches, args) -> float:
    """Seconds for open_clip's train_one_epoch over `batches` (fresh optimizer/scheduler, like a new epoch)."""
    from open_clip import ClipLoss
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    params = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in params if exclude(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in params if not exclude(n, p)], "weight_decay": args.wd}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-6,
    )
    scheduler = cosine_lr(optimizer, args.lr, args.warmup, len(batches))
    data = {"train": SyntheticLoader(batches)}
    synchronize(args.device)
    start = time.perf_counter()
    train_one_epoch(model, data, ClipLoss(), 0, optimizer, None, scheduler, None, args)
    synchronize(args.device)
    return time.perf_counter() - start


def vlbridge_round(model, batches, args) -> float:
    from vlbridge.training.clip import ClipOptimConfig, contrastive_step, make_optimizer
    from vlbridge.training.loss import ClipLoss

    optim_cfg = ClipOptimConfig(lr=args.lr, weight_decay=args.wd, warmup_steps=args.warmup, grad_clip_norm=args.grad_clip_norm)
    optimizer, scheduler = make_optimizer(model, optim_cfg, len(batches))  # exactly what train_clip builds
    loss_fn = ClipLoss()
    device = torch.device(args.device)
    synchronize(args.device)
    start = time.perf_counter()
    for step, (images, texts) in enumerate(batches):
        batch = {"pixel_values": images, "input_ids": texts}
        loss = contrastive_step(model, batch, loss_fn, optimizer, device, 1, optim_cfg.grad_clip_norm)
        scheduler.step()
        if step % args.log_every_n_steps == 0:
            float(loss)  # the logged value, read from the device at log steps as train_clip's loop does
    synchronize(args.device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vl-tiny-vit", help="open_clip architecture (vlbridge tiny configs registered)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (alternating)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="chip's dense bf16 peak for MFU (default: from the GPU's name; none on CPU)")
    cli = parser.parse_args()
    if cli.threads:
        torch.set_num_threads(cli.threads)
    logging.basicConfig(level=logging.WARNING)
    from vlbridge.models.clip import architecture_config, model_from_config

    model_cfg = architecture_config(cli.arch)
    torch.manual_seed(0)
    initial = model_from_config(model_cfg, cli.device)
    initial.output_dict = True  # open_clip's trainer reads the dict output
    precision = "amp_bf16" if cli.device.startswith("cuda") else "fp32"
    args = SimpleNamespace(
        device=cli.device, precision=precision, distill=False, accum_freq=1, skip_scheduler=False, grad_clip_norm=1.0,
        horovod=False, log_every_n_steps=100, world_size=1, rank=0, local_rank=0, batch_size=cli.batch_size,
        wandb=False, lr=1e-3, wd=0.1, warmup=2, save_logs=False,
    )
    batches = [(i.to(cli.device), t.to(cli.device)) for i, t in synthetic_batches(model_cfg, cli.batch_size, cli.steps + 2)]
    timings: dict[str, list[float]] = {"open_clip": [], "vlbridge": []}
    runners = {"open_clip": open_clip_round, "vlbridge": vlbridge_round}
    for round_index in range(cli.rounds):
        for name in (("open_clip", "vlbridge") if round_index % 2 == 0 else ("vlbridge", "open_clip")):
            model = copy.deepcopy(initial).train()
            runners[name](model, batches[:2], args)  # warm-up steps, not timed
            timings[name].append(cli.steps * cli.batch_size / runners[name](model, batches[2:], args))
    rates = {name: statistics.median(values) for name, values in timings.items()}
    print(f"CLIP train step, {cli.arch}, batch {cli.batch_size}, {cli.device}, {torch.get_num_threads()} threads, "
          f"{cli.rounds} rounds x {cli.steps} steps")
    for name, values in timings.items():
        print(f"  {name:9s} {rates[name]:8.1f} samples/s (rounds: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"  ratio vlbridge / open_clip = {rates['vlbridge'] / rates['open_clip']:.3f} (goal >= 1.0)")
    peak = peak_tflops(cli.device, cli.peak_tflops)
    if peak:
        flops = step_flops(copy.deepcopy(initial).train(), batches[0], cli.device)  # per step of batch_size samples
        chip = torch.cuda.get_device_name(cli.device) if cli.device.startswith("cuda") else "given"
        print(f"  {flops / 1e12:.3f} TFLOP per step; MFU vs {peak:.1f} TFLOP/s bf16 peak ({chip}):")
        for name, rate in rates.items():
            achieved = flops * rate / cli.batch_size
            print(f"  {name:9s} {achieved / 1e12:7.1f} TFLOP/s = {100 * achieved / (peak * 1e12):.1f}% MFU")


if __name__ == "__main__":
    main()
