import numpy as np
import pytest
import torch
import torchaudio.functional

from speakertrip.audio.augment import AugmentConfig, Augmenter, add_noise, find_rirs
from speakertrip.errors import ConfigError
from speakertrip.testing import make_musan_tree, make_rir_tree, speech_like

T = 8000


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    return make_musan_tree(root / "musan", duration=0.3), make_rir_tree(root / "RIRS_NOISES")


@pytest.fixture(scope="module")
def batch():
    waves = torch.stack([torch.from_numpy(speech_like(speaker, T / 16000, seed=row)) for row, speaker in
                         enumerate([0, 0, 1, 1, 2, 2])])
    return waves, torch.tensor([0, 0, 1, 1, 2, 2])


def snr_db(clean, mixed, length):
    noise = (mixed - clean)[:length]
    return 10 * torch.log10(clean[:length].square().mean() / noise.square().mean())


@pytest.mark.parametrize("kind", ["noise", "music", "babble"])
def test_additive_kinds_hit_the_snr(folders, batch, kind):
    musan, _ = folders
    config = AugmentConfig(musan=str(musan), weights={kind: 1.0}, **{f"{kind}_snr": (7.0, 7.0)})
    waves, labels = batch
    lengths = torch.tensor([T, T, T, 5000, T, 3000])
    out, same_labels = Augmenter(config, num_speakers=3)(waves, labels, lengths)
    assert torch.equal(same_labels, labels) and out.shape == waves.shape
    for row in range(len(waves)):
        assert snr_db(waves[row], out[row], lengths[row]) == pytest.approx(7.0, abs=0.01)
        assert not out[row, lengths[row]:].any()


def test_add_noise_matches_a_loop():
    clean, noise = torch.randn(3, 100), torch.randn(3, 100)
    snr, lengths = torch.tensor([0.0, 5.0, 20.0]), torch.tensor([100, 60, 10])
    mixed = add_noise(clean, noise, snr, lengths)
    for row in range(3):
        n = int(lengths[row])
        scale = (clean[row, :n].square().mean() / noise[row, :n].square().mean() / 10 ** (snr[row] / 10)).sqrt()
        torch.testing.assert_close(mixed[row, :n], clean[row, :n] + scale * noise[row, :n])


def test_reverb_is_a_normalised_convolution(folders, batch):
    waves, labels = batch
    rirs = [torch.tensor([2.0]), torch.tensor([1.0, 0.0, -0.5, 0.25])]
    out = Augmenter.reverberate(waves[:2], rirs)
    torch.testing.assert_close(out[0], waves[0], atol=1e-5, rtol=1e-5)
    kernel = rirs[1].numpy() / np.sqrt((rirs[1].numpy() ** 2).sum())
    np.testing.assert_allclose(out[1].numpy(), np.convolve(waves[1].numpy(), kernel)[:T], atol=1e-5)
    _, rir_folder = folders
    found = find_rirs(rir_folder)
    assert len(found) == 2 and all("simulated_rirs" in str(p) for p in found)  # isotropic noise left out
    augmenter = Augmenter(AugmentConfig(rirs=str(rir_folder), weights={"reverb": 1.0}), num_speakers=3)
    reverberant, _ = augmenter(waves, labels)
    assert not torch.allclose(reverberant, waves) and torch.isfinite(reverberant).all()


def test_speed_perturbation_per_speaker_with_new_labels(batch):
    waves, labels = batch
    augmenter = Augmenter(AugmentConfig(weights={"none": 1.0}, speed_factors=(0.9, 1.0, 1.1)), num_speakers=3, seed=2)
    assert augmenter.num_labels == 9
    seen = set()
    for _ in range(6):
        out, new_labels = augmenter(waves, labels)
        for row in range(len(waves)):
            group, speaker = divmod(int(new_labels[row]), 3)
            assert speaker == labels[row]
            factor = {0: 1.0, 1: 0.9, 2: 1.1}[group]
            seen.add(factor)
            assert new_labels[row] == new_labels[row ^ 1]  # both rows of a speaker share the factor
            if factor == 1.0:
                torch.testing.assert_close(out[row], waves[row])
                continue
            source = {0.9: 9, 1.1: 11}[factor]
            expected = torchaudio.functional.resample(waves[row], source, 10)
            expected = expected[torch.arange(T) % len(expected)]  # cut (slower) or repeat (faster)
            torch.testing.assert_close(out[row], expected, atol=1e-5, rtol=1e-4)
    assert seen == {0.9, 1.0, 1.1}
    keep = Augmenter(AugmentConfig(weights={"none": 1.0}, speed_factors=(0.9, 1.1), speed_as_new_speakers=False), 3)
    assert torch.equal(keep(waves, labels)[1], labels) and keep.num_labels == 3


def test_weights_pick_kinds_and_int16_input(folders, batch):
    musan, rirs = folders
    waves, labels = batch
    config = AugmentConfig(musan=str(musan), rirs=str(rirs))
    as_int = (waves * 32767).round().to(torch.int16)
    first, _ = Augmenter(config, 3, seed=5)(as_int, labels)
    again, _ = Augmenter(config, 3, seed=5)(as_int, labels)
    assert first.dtype == torch.float32 and torch.equal(first, again)
    unchanged = [torch.allclose(first[row], as_int[row].float() / 32768) for row in range(len(waves))]
    assert 0 < sum(unchanged) < len(waves) or not all(unchanged)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="'reverb' is set but rirs"):
        AugmentConfig(weights={"reverb": 1.0})
    with pytest.raises(ConfigError, match="kinds from none, reverb"):
        AugmentConfig(weights={"echo": 1.0})
    (tmp_path / "noise").mkdir()
    with pytest.raises(ConfigError, match="no wav/flac files for noise"):
        Augmenter(AugmentConfig(musan=str(tmp_path), weights={"noise": 1.0}), 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_gpu(folders, batch):
    musan, rirs = folders
    waves, labels = batch
    augmenter = Augmenter(AugmentConfig(musan=str(musan), rirs=str(rirs), speed_factors=(0.9, 1.0, 1.1)), 3)
    out, new_labels = augmenter(waves.cuda(), labels.cuda())
    assert out.device.type == "cuda" and new_labels.device.type == "cuda"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from speakertrip.corpora.voxceleb import prepare_voxceleb
    from speakertrip.data.manifest import read_manifest
    from speakertrip.testing import make_voxceleb_tree

    root = tmp_path_factory.mktemp("corpus")
    tree = make_voxceleb_tree(root / "vox", num_speakers=6, sessions=2, utterances_per_session=2,
                              duration=(0.6, 1.0), seed=4)
    return read_manifest(prepare_voxceleb(tree, root / "data", workers=1, progress=False)["train"])


def test_plans_read_in_workers_give_the_batches_of_the_main_process(folders, corpus):
    """Noise and RIR crops are read with the batch (DataLoader workers); the batches do not depend on the
    number of workers, and applying a plan on the device equals augmenting in one call with the same seed."""
    from torch.utils.data import DataLoader

    from speakertrip.data.datasets import CropDataset, TrainingBatches, as_batch
    from speakertrip.data.sampler import PKSampler

    musan, rirs = folders
    crops = CropDataset(corpus, crop_seconds=0.5)
    augmenter = Augmenter(AugmentConfig(musan=str(musan), rirs=str(rirs), speed_factors=(0.9, 1.0, 1.1)), 6)
    sampler = PKSampler(crops.speaker_ids, p=3, k=2, seed=1, batches_per_epoch=4)
    loaded = {workers: list(DataLoader(TrainingBatches(crops, augmenter, seed=7), sampler=sampler, batch_size=None,
                                       collate_fn=as_batch, num_workers=workers))
              for workers in (0, 2)}
    kinds_seen = set()
    for batch, again, items in zip(loaded[0], loaded[2], sampler):
        for name, value in batch._asdict().items():
            if name != "augment":
                assert torch.equal(value, getattr(again, name)), name
        plan = batch.augment
        for name, value in plan._asdict().items():
            assert value == getattr(again.augment, name) if name == "speed_counts" else \
                torch.equal(value, getattr(again.augment, name)), name
        out, labels = augmenter.apply(batch.waveforms, batch.lengths, plan)
        augmenter.rng = np.random.default_rng([7, *(seed for _, seed in items)])
        expected, expected_labels = augmenter(batch.waveforms, batch.labels, batch.lengths)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        assert torch.equal(labels, expected_labels) and torch.equal(labels % 6, batch.labels)
        assert plan.noise.dtype == torch.int16  # 16-bit MUSAN files travel as int16, like speech crops
        kinds_seen |= {"noise" if plan.noisy.any() else "", "reverb" if len(plan.rir_rows) else ""}
    assert {"noise", "reverb"} <= kinds_seen


def test_source_headers_are_read_once(folders, monkeypatch, tmp_path):
    import speakertrip.audio.headers as headers

    musan, rirs = folders
    monkeypatch.setenv("SPEAKERTRIP_CACHE", str(tmp_path))
    reads = []
    real = headers.audio_info
    monkeypatch.setattr(headers, "audio_info", lambda path: reads.append(path) or real(path))
    config = AugmentConfig(musan=str(musan), weights={"noise": 1.0, "babble": 1.0})
    first = Augmenter(config, 3).sources
    assert len(reads) == 4  # 2 noise + 2 speech files
    assert Augmenter(config, 3).sources == first and len(reads) == 4  # the second run reads no header
    (musan / "noise" / "free-sound" / "noise-0000.wav").touch()  # a changed file is read again
    Augmenter(config, 3)
    assert len(reads) == 5
