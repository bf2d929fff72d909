"""Decoding in DataLoader workers (`extract_features(workers=N)`, `vlbridge extract --workers N`):
the same features, order and skips as decoding in the main process; workers ignore stop
signals, decode a bounded number of windows ahead and are gone when extraction returns."""

from __future__ import annotations

import multiprocessing
import signal

import pytest
import torch
from PIL import Image

from vlbridge.cli import main
from vlbridge.commands.extract import cache_dataset_name, default_workers, load_image_records
from vlbridge.data.features import PREFETCH_WINDOWS, FeatureStore, extract_features
from vlbridge.models.registry import build_encoder

from test_features import weights  # noqa: F401 (a fixture)


def folder_with_bad_files(root) -> None:
    """Seven good PNGs (captioned), one cut-short PNG and one text file named .png."""
    root.mkdir()
    for i in range(7):
        Image.new("RGB", (20 + 3 * i, 24), ((41 * i) % 256, (83 * i) % 256, 90)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"picture {i}\n")
    whole = (root / "img0.png").read_bytes()
    (root / "cut.png").write_bytes(whole[: len(whole) // 2])  # a corrupt image
    (root / "notes.png").write_text("this is not an image\n")  # a non-image
    for name in ("cut", "notes"):
        (root / f"{name}.txt").write_text(f"{name}\n")


def test_extract_with_workers_equals_extract_without(tmp_path, weights, capsys):
    data = tmp_path / "images"
    folder_with_bad_files(data)
    spec = f"timm:test_resnet@{weights}:32px"
    printed = {}
    for workers in (0, 2):
        argv = ["extract", "--encoder", spec, "--dataset", f"folder:{data}", "--split", "all", "--cache",
                str(tmp_path / f"w{workers}"), "--chunk-size", "4", "--batch-size", "3", "--workers", str(workers),
                "--device", "cpu"]
        assert main(argv) == 0
        printed[workers] = capsys.readouterr().out.splitlines()[-1]
    assert printed[0] == printed[2] == "9 images: 9 computed, 0 reused, 2 skipped (bad image)"

    encoder = build_encoder(spec)
    records = load_image_records(f"folder:{data}", "all")
    name = cache_dataset_name(f"folder:{data}", 0, 64)
    serial = FeatureStore(tmp_path / "w0").extract(encoder, name, "all", records)
    parallel = FeatureStore(tmp_path / "w2").extract(encoder, name, "all", records)
    assert parallel.stats.computed == 0  # read back, not recomputed
    assert list(parallel.features) == list(serial.features) and len(serial.features) == 7  # same ids, same order
    assert parallel.stats.skipped == serial.stats.skipped and len(serial.stats.skipped) == 2
    for key, value in serial.features.items():
        assert torch.equal(parallel.features[key], value), key


def test_workers_match_the_main_process_on_every_window_split(weights):
    encoder = build_encoder(f"timm:test_resnet@{weights}:32px")
    images = [Image.new("RGB", (24, 20 + i), (9 * i, 200 - 7 * i, 30)) for i in range(8)]
    images[3] = b"not an image"
    for batch_size, workers in [(1, 1), (3, 2), (5, 3), (16, 2)]:
        serial = extract_features(encoder, images, batch_size=batch_size)
        parallel = extract_features(encoder, images, batch_size=batch_size, workers=workers)
        assert parallel.kept == serial.kept == [0, 1, 2, 4, 5, 6, 7]
        assert list(parallel.skipped) == list(serial.skipped) == ["3"]  # (PIL's reason names a BytesIO's address)
        assert parallel.skipped["3"].startswith("cannot decode image <bytes>: cannot identify image file")
        assert torch.equal(parallel.features, serial.features), (batch_size, workers)
    assert extract_features(encoder, [], workers=2).features.shape == (0, encoder.feature_dim)
    assert not multiprocessing.active_children()


class SignalProbe:
    """Preprocess that fills the pixels with 1 where SIGINT and SIGTERM are ignored, else 0, and
    counts every image it decoded in a counter shared with the workers."""

    def __init__(self):
        self.decoded = multiprocessing.Value("i", 0)  # images decoded, all processes together

    def __call__(self, image: Image.Image) -> torch.Tensor:
        ignored = all(signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM))
        with self.decoded.get_lock():
            self.decoded.value += 1
        return torch.full((3, 2, 2), float(ignored))  # (3, H, W)


class ProbeEncoder:
    """Records how far decoding ran ahead of encoding at each call; raises at call `fail_at`."""

    def __init__(self, fail_at: int | None = None):
        self.preprocess = SignalProbe()
        self.device = torch.device("cpu")
        self.consumed, self.ahead, self.fail_at = 0, [], fail_at

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:  # (b, 3, 2, 2) -> (b, 1)
        if self.fail_at is not None and len(self.ahead) == self.fail_at:
            raise RuntimeError("encoder failed")
        self.consumed += len(pixels)
        self.ahead.append(self.preprocess.decoded.value - self.consumed)
        return pixels.amin(dim=(1, 2, 3))[:, None]


def test_workers_ignore_stop_signals_stay_bounded_and_shut_down():
    images = [Image.new("RGB", (4, 4))] * 60
    encoder = ProbeEncoder()
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # as the test runner left them
    out = extract_features(encoder, images, batch_size=2, workers=2)
    assert out.features.flatten().tolist() == [1.0] * 60  # decoded in workers that ignore SIGINT / SIGTERM
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # ... this process's unchanged
    assert max(encoder.ahead) <= 2 * PREFETCH_WINDOWS * 2  # workers x windows ahead x window size
    assert not multiprocessing.active_children()  # shut down once the windows ran out

    assert extract_features(ProbeEncoder(), images, batch_size=2).features.flatten().tolist() == [0.0] * 60
    with pytest.raises(RuntimeError, match="encoder failed") as failure:
        extract_features(ProbeEncoder(fail_at=3), images, batch_size=2, workers=2)
    assert failure.tb is not None  # the traceback (and the frames it holds) still alive ...
    assert not multiprocessing.active_children()  # ... and the workers gone all the same


def test_default_workers_leave_a_core_to_each_gpu_rank_and_none_on_a_cpu(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert [default_workers(1, "cuda", cpus) for cpus in (1, 2, 4, 64)] == [0, 1, 3, 4]
    assert default_workers(2, "cuda", 4) == 1 and default_workers(8, "cuda", 16) == 1
    assert default_workers(1, "cpu", 64) == 0  # the encoder has the cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 8 ranks over two machines: 4 share these cores
    assert default_workers(8, "cuda", 16) == 3


def test_negative_workers_are_refused(capsys):
    assert main(["extract", "--encoder", "efficientnet-lite0", "--dataset", "shapes", "--workers", "-1"]) == 2
    assert "--workers must be a number >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="workers >= 0"):
        FeatureStore("unused", workers=-1)
