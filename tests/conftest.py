"""Shared pytest fixtures: quiet, deterministic, offline, single-threaded CPU runs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread_for_fixtures():
    """One torch thread from the start, so module- and session-scoped fixtures (built before any
    function-scoped fixture runs) build their tiny models single-threaded too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # Tiny models run far faster on one thread, and CI's two cores are shared by test workers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def serve_models(tmp_path_factory):
    """Tiny CLIP + LiMBeR saved on disk and five shapes-world images, shared by the API / index / server tests."""
    from helpers.serve_helpers import make_models, write_images

    root = tmp_path_factory.mktemp("serve-models")
    models = make_models(root)
    images = sorted(write_images(root / "images", 5).glob("*.png"))
    return models, images
