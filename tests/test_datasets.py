import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from speakertrip.data.datasets import CropDataset, bucket_batches, collate_crops
from speakertrip.data.manifest import Utterance, build_utterances
from speakertrip.data.sampler import PKSampler
from speakertrip.errors import ConfigError
from speakertrip.testing import make_voxceleb_tree, speech_like

CROP = 0.5


@pytest.fixture(scope="module")
def utterances(tmp_path_factory):
    root = make_voxceleb_tree(tmp_path_factory.mktemp("vox"), num_speakers=3, duration=(0.6, 1.2), trial_list=False)
    entries = [(p.relative_to(root / "wav").as_posix(), p.parts[-3], p) for p in sorted(root.rglob("*.wav"))]
    return build_utterances(entries, progress=False)[0]


def test_crops_are_slices_at_the_seeded_position(utterances):
    dataset = CropDataset(utterances, CROP)
    crop = int(CROP * 16000)
    for index, utterance in enumerate(utterances):
        whole, _ = sf.read(utterance.path, dtype="int16")
        wave, label = dataset[(index, 12345)]
        start = 12345 % (len(whole) - crop + 1)
        assert wave.dtype == torch.int16 and len(wave) == crop
        np.testing.assert_array_equal(wave.numpy(), whole[start : start + crop])
        assert label == dataset.speaker_to_index[utterance.spk_id]
        assert torch.equal(dataset[(index, 12345)][0], wave)
    assert list(dataset.speaker_to_index) == sorted({u.spk_id for u in utterances})
    assert torch.equal(dataset[3][0], dataset[(3, 3)][0])


def test_short_files_are_repeated_to_fill_the_crop(tmp_path):
    signal = (speech_like(0, 0.3) * 32767).astype(np.int16)
    sf.write(tmp_path / "short.wav", signal, 16000, subtype="PCM_16")
    utterance = Utterance("short", "s", str(tmp_path / "short.wav"), 0.3, 16000, len(signal))
    wave, _ = CropDataset([utterance], 1.0)[(0, 99)]
    assert len(wave) == 16000
    np.testing.assert_array_equal(wave.numpy(), np.concatenate([signal] * 4)[:16000])


def test_float_and_resampled_files_give_float_crops(tmp_path):
    signal = speech_like(1, 1.0, 8000)
    sf.write(tmp_path / "a.flac", signal, 8000, subtype="PCM_24")
    utterance = Utterance("a", "s", str(tmp_path / "a.flac"), 1.0, 8000, 8000)
    wave, _ = CropDataset([utterance], CROP)[(0, 7)]
    assert wave.dtype == torch.float32 and len(wave) == int(CROP * 16000)


def test_loader_with_pk_sampler_and_workers(utterances):
    dataset = CropDataset(utterances, CROP)
    sampler = PKSampler(dataset.speaker_ids, p=3, k=2, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_crops, num_workers=2)
    batches = list(loader)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert batch.waveforms.shape == (6, int(CROP * 16000)) and batch.waveforms.dtype == torch.int16
        assert batch.lengths.tolist() == [int(CROP * 16000)] * 6
        assert sorted(torch.bincount(batch.labels).tolist()) == [2, 2, 2]
    again = list(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_crops))
    assert all(torch.equal(a.waveforms, b.waveforms) for a, b in zip(batches, again))
    assert batches[0].to("cpu").labels.dtype == torch.int64


def test_collate_mixes_int16_and_float_as_float():
    batch = collate_crops([(torch.tensor([16384], dtype=torch.int16), 0), (torch.tensor([0.25, 0.5]), 1)])
    assert batch.waveforms.dtype == torch.float32
    assert batch.waveforms.tolist() == [[0.5, 0.0], [0.25, 0.5]] and batch.lengths.tolist() == [1, 2]


@pytest.mark.parametrize("seconds, size", [(10.0, None), (None, 3), (6.0, 2)])
def test_bucket_batches_invariants(seconds, size):
    durations = list(np.random.default_rng(0).uniform(0.5, 8.0, 50))
    batches = bucket_batches(durations, seconds, size)
    assert sorted(index for batch in batches for index in batch) == list(range(50))
    flat = [durations[index] for batch in batches for index in batch]
    assert flat == sorted(flat, reverse=True)
    for batch in batches:
        cost = len(batch) * max(durations[index] for index in batch)
        assert len(batch) == 1 or seconds is None or cost <= seconds
        assert size is None or len(batch) <= size
    for batch, following in zip(batches, batches[1:]):  # greedy: the next item did not fit
        grown = batch + following[:1]
        too_big = size is not None and len(grown) > size
        too_long = seconds is not None and len(grown) * durations[batch[0]] > seconds
        assert too_big or too_long


def test_bad_settings():
    with pytest.raises(ConfigError, match="needs max_batch_seconds or max_batch_size"):
        bucket_batches([1.0])
    with pytest.raises(ConfigError, match="crop_seconds"):
        CropDataset([], 0)
