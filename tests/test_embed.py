import numpy as np
import pytest
import soundfile as sf
import torch

from speakertrip.audio import load_audio, prepare_waveform, trim_silence
from speakertrip.data.manifest import Utterance
from speakertrip.errors import AudioError, ConfigError
from speakertrip.models import EmbeddingModel
from speakertrip.models.batched import embed_many, embed_one, split_chunks
from speakertrip.features import FeatureConfig
from speakertrip.testing import make_voxceleb_tree, speech_like, tiny_model, write_bad_audio

pytestmark = pytest.mark.usefixtures("one_thread")





@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = make_voxceleb_tree(tmp_path_factory.mktemp("vox"), num_speakers=3, sessions=1, utterances_per_session=2,
                              duration=(0.6, 1.6))
    return sorted((root / "wav").rglob("*.wav"))


def reference(model, wave):
    """The model on one unpadded waveform: what every extraction path must reproduce."""
    with torch.inference_mode():
        return model(torch.from_numpy(wave)[None]).numpy()[0]


def test_one_file_equals_the_model_on_its_samples(model, tree):
    wave = load_audio(tree[0], 16000)
    embedding = model.embed(tree[0])
    assert embedding.dtype == np.float32 and embedding.shape == (192,)
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(embedding, reference(model, wave), atol=1e-6)
    np.testing.assert_allclose(model.embed(wave, sample_rate=16000), embedding, atol=1e-6)
    np.testing.assert_allclose(model.embed(torch.from_numpy(wave), sample_rate=16000), embedding, atol=1e-6)
    stereo = np.stack([wave, wave], axis=1)
    np.testing.assert_allclose(model.embed(stereo, sample_rate=16000), embedding, atol=1e-6)


@pytest.mark.parametrize("encoder, options", [("ecapa", {"channels": 32}), ("tdnn", {"channels": 64, "stats_channels": 96})])
def test_batched_equals_alone(encoder, options):
    model = tiny_model(encoder, options)
    rng = np.random.default_rng(1)
    waves = [speech_like(int(rng.integers(50)), n / 16000, seed=i) for i, n in enumerate(rng.integers(1700, 30000, 24))]
    batched = embed_many(model, waves, sample_rate=16000, batch_seconds=8.0, max_batch_size=7)
    alone = np.stack([reference(model, wave) for wave in waves])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_files_manifest_items_and_options(model, tree):
    utterances = [Utterance(p.stem, p.parent.parent.name, str(p), sf.info(p).duration, 16000, sf.info(p).frames)
                  for p in tree]
    by_path = embed_many(model, tree, progress=True, num_threads=1, device="cpu", loader_threads=2)
    assert torch.get_num_threads() >= 1 and not model.training
    np.testing.assert_allclose(embed_many(model, utterances), by_path, atol=1e-6)
    expected = np.stack([reference(model, load_audio(p, 16000)) for p in tree])
    np.testing.assert_allclose(by_path, expected, atol=1e-5)
    assert embed_many(model, []).shape[0] == 0


def test_resamples_other_rates(model, tree):
    wave8k = load_audio(tree[1], 8000)
    np.testing.assert_allclose(model.embed(wave8k, sample_rate=8000),
                               reference(model, prepare_waveform(wave8k, 8000, 16000)), atol=1e-6)


@pytest.mark.slow
def test_trimming_inside_extraction(model):
    speech = speech_like(4, 1.0)
    padded = np.concatenate([np.full(8000, 1e-5, np.float32), speech, np.full(12000, -1e-5, np.float32)])
    trimmed = trim_silence(padded, 16000, 40.0)
    assert 16000 <= len(trimmed) < 16000 + 600
    np.testing.assert_allclose(embed_one(model, padded, 16000, trim_db=40.0), reference(model, trimmed), atol=1e-6)
    assert np.abs(embed_one(model, padded, 16000) - reference(model, trimmed)).max() > 1e-3


def test_chunks_average_chunk_embeddings(model):
    assert split_chunks(10, 4) == [(0, 3), (3, 7), (7, 10)]
    assert split_chunks(8, 4) == [(0, 4), (4, 8)] and split_chunks(3, 4) == [(0, 3)]
    long = speech_like(5, 2.5)
    spans = split_chunks(len(long), 16000)
    summed = sum(reference(model, long[a:b]) for a, b in spans)
    chunked = embed_many(model, [long, long[:8000]], sample_rate=16000, chunk_seconds=1.0)
    np.testing.assert_allclose(chunked[0], summed / np.linalg.norm(summed), atol=1e-6)
    np.testing.assert_allclose(chunked[1], reference(model, long[:8000]), atol=1e-6)


def test_bad_inputs_name_the_file(model, tmp_path):
    bad = write_bad_audio(tmp_path)
    for kind in ("missing", "empty", "not_audio", "corrupt", "silent", "nan", "no_frames"):
        with pytest.raises(AudioError, match=f"{kind}.wav"):
            embed_many(model, [bad[kind]])
    with pytest.raises(AudioError, match=r"short\.wav: 0\.050 s of audio; embeddings need at least 0\.1 s"):
        model.embed(bad["short"])
    with pytest.raises(AudioError, match=r"item 1 \(ndarray\): contains NaN"):
        embed_many(model, [speech_like(0, 0.5), np.full(8000, np.nan, np.float32)], sample_rate=16000)
    with pytest.raises(ConfigError, match="needs its sample_rate"):
        model.embed(np.ones(16000, np.float32))
    with pytest.raises(ConfigError, match="chunk_seconds"):
        embed_many(model, [speech_like(0, 0.5)], sample_rate=16000, chunk_seconds=0.0)
    with pytest.raises(ConfigError, match="one utterance"):
        embed_one(model, ["a.wav"])
    with pytest.raises(AudioError, match="after trimming silence"):
        embed_one(model, np.concatenate([np.zeros(16000), [0.5]]).astype(np.float32), 16000, trim_db=20)


def _gather_on_rank(rank: int, world: int, port: int) -> None:
    import os

    import torch.distributed as dist

    from speakertrip.extraction.corpus import gather_rank_shards, rank_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for total in (7, 2):  # uneven shards; a rank without items
        rows = np.arange(total * 3, dtype=np.float32).reshape(total, 3)
        mine = rank_shard(rows, rank, world)
        shard = mine if len(mine) else np.zeros((0,), np.float32)  # what embed_many gives a rank without items
        assert np.array_equal(gather_rank_shards(shard, total, rank, world), rows)
        on_zero = gather_rank_shards(shard, total, rank, world, everywhere=False)
        assert on_zero is None if rank else np.array_equal(on_zero, rows)
    dist.destroy_process_group()


@pytest.mark.slow
def test_rank_shards_gather_back_in_item_order():
    """The one shard choice (items[rank::world]) and merge order, everywhere (validation) or on rank 0 alone
    (embed_corpus), over three gloo ranks."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_gather_on_rank, args=(3, port), nprocs=3)
