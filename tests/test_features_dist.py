"""Two-process extraction (`vlbridge extract` under a torchrun-style environment, gloo on CPU,
started with torch.multiprocessing.spawn, images decoded in a DataLoader worker per rank) equals
a one-process extraction decoding in its main process, and each chunk is encoded by exactly one rank."""

from __future__ import annotations

import contextlib
import io
import os

import pytest
import timm
import torch
import torch.multiprocessing as mp
from helpers import free_port
from safetensors.torch import save_file

from vlbridge.commands.extract import cache_dataset_name, load_image_records
from vlbridge.data.features import FeatureStore
from vlbridge.models.registry import build_encoder


def _extract_worker(rank: int, port: int, argv: list[str], out_dir: str) -> None:
    """One torchrun-like rank: the environment torchrun would set, then the real CLI."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from vlbridge.cli import main

    calls: list[int] = []
    import vlbridge.models.encoders_timm_hf as timm_hf

    original = timm_hf.TimmImageEncoder.encode

    def counting_encode(self, pixels):
        calls.append(len(pixels))
        return original(self, pixels)

    timm_hf.TimmImageEncoder.encode = counting_encode
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    probe_calls = 1  # the shape probe in ImageEncoder._finalize at build time
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as handle:
        handle.write(f"{code}\n{sum(calls) - probe_calls}\n{printed.getvalue()}")


@pytest.mark.slow  # ~25 CPU-s: three interpreters import torch + timm + the CLI
def test_two_process_extraction_equals_one_process(tmp_path):
    torch.manual_seed(5)
    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(weights))
    spec = f"timm:test_resnet@{weights}:32px"
    argv = ["extract", "--encoder", spec, "--dataset", "shapes", "--split", "train", "--n", "10",
            "--image-size", "32", "--cache", str(tmp_path / "ddp"), "--chunk-size", "3", "--batch-size", "2",
            "--device", "cpu", "--workers", "1"]  # each rank decodes in a worker; the one-process store below does not
    mp.spawn(_extract_worker, args=(free_port(), argv, str(tmp_path)), nprocs=2, join=True)

    outputs = [(tmp_path / f"rank{r}.txt").read_text().split("\n", 2) for r in (0, 1)]
    assert [o[0] for o in outputs] == ["0", "0"]
    # chunks 0 and 2 (3 + 3 records) on rank 0, chunks 1 and 3 (3 + 1) on rank 1
    assert [int(o[1]) for o in outputs] == [6, 4]
    assert "10 images: 10 computed, 0 reused" in outputs[0][2] and outputs[1][2] == ""

    encoder = build_encoder(spec)
    records = load_image_records("shapes", "train", 10, 0, 32)
    name = cache_dataset_name("shapes", 0, 32)
    from_ddp = FeatureStore(tmp_path / "ddp").extract(encoder, name, "train", records)
    assert from_ddp.stats.computed == 0 and from_ddp.stats.reused == 10
    single = FeatureStore(tmp_path / "one", chunk_size=3).get_or_extract(encoder, name, "train", records, batch_size=2)
    assert list(from_ddp.features) == list(single) == [r.id for r in records]
    for key, value in single.items():
        assert torch.allclose(from_ddp.features[key], value, atol=1e-6), key
