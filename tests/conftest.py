"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (and stalls on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Header caches (augmentation sources, prepared corpora) go to a temporary folder, not ~/.cache."""
    import os

    previous = os.environ.get("SPEAKERTRIP_CACHE")
    os.environ["SPEAKERTRIP_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("SPEAKERTRIP_CACHE", None)
    else:
        os.environ["SPEAKERTRIP_CACHE"] = previous
