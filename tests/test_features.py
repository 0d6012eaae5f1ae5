import pytest
import torch
import torchaudio
import torchaudio.compliance.kaldi as kaldi
from speechbrain.lobes.features import Fbank
from speechbrain.processing.features import InputNormalization

from speakertrip.errors import ConfigError
from speakertrip.features import FeatureConfig, LogMelFrontend

LENGTHS = torch.tensor([24000, 17001, 9999, 400])


@pytest.fixture(scope="module")
def waves():
    generator = torch.Generator().manual_seed(0)
    signal = torch.randn(len(LENGTHS), int(LENGTHS.max()), generator=generator) * 0.1
    signal += torch.sin(torch.arange(signal.shape[1]) * 0.05)  # a tone, so bins differ in energy
    return signal


def kaldi_reference(wave, config):
    return kaldi.fbank(wave[None] * 32768, num_mel_bins=config.n_mels, frame_length=25, frame_shift=10,
                       dither=0.0, sample_frequency=16000, window_type=config.window, use_energy=False,
                       preemphasis_coefficient=config.preemphasis or 0.0, low_freq=config.f_min,
                       high_freq=config.f_max)


@pytest.mark.parametrize("window, preemphasis", [("hamming", 0.97), ("povey", None)])
def test_kaldi_mode_matches_torchaudio_kaldi_fbank(waves, window, preemphasis):
    config = FeatureConfig.kaldi(mean_norm=False, window=window, preemphasis=preemphasis)
    features, frames = LogMelFrontend(config)(waves, LENGTHS)
    for row, length in enumerate(LENGTHS):
        reference = kaldi_reference(waves[row, :length], config)
        assert frames[row] == reference.shape[0]
        torch.testing.assert_close(features[row, : frames[row]], reference, rtol=1e-4, atol=1e-4)


def test_kaldi_mode_mean_normalises_like_wespeaker(waves):
    config = FeatureConfig.kaldi()
    features, frames = LogMelFrontend(config)(waves, LENGTHS)
    for row, length in enumerate(LENGTHS):
        reference = kaldi_reference(waves[row, :length], config)
        reference = reference - reference.mean(dim=0)
        torch.testing.assert_close(features[row, : frames[row]], reference, rtol=1e-4, atol=3e-4)


@pytest.mark.parametrize("var_norm", [False, True])
def test_speechbrain_mode_matches_fbank_and_sentence_norm(waves, var_norm):
    features, frames = LogMelFrontend(FeatureConfig.speechbrain(var_norm=var_norm))(waves, LENGTHS)
    fbank = Fbank(n_mels=80)
    norm = InputNormalization(norm_type="sentence", std_norm=var_norm)
    for row, length in enumerate(LENGTHS):
        reference = norm(fbank(waves[row : row + 1, :length]), torch.ones(1))[0]
        assert frames[row] == reference.shape[0]
        torch.testing.assert_close(features[row, : frames[row]], reference, rtol=1e-4, atol=1e-4)


def test_speakertrip_mode_matches_torchaudio_spectrogram_and_kaldi_banks(waves):
    config = FeatureConfig(preemphasis=None)
    features, frames = LogMelFrontend(config)(waves, LENGTHS)
    spectrogram = torchaudio.transforms.Spectrogram(n_fft=512, win_length=400, hop_length=160, power=2.0,
                                                    window_fn=torch.hamming_window, pad_mode="constant")
    banks, _ = kaldi.get_mel_banks(80, 512, 16000.0, 20.0, 7600.0, 100.0, -500.0, 1.0)
    banks = torch.nn.functional.pad(banks, (0, 1))
    for row, length in enumerate(LENGTHS):
        reference = (spectrogram(waves[row, :length]).T @ banks.T + 1e-6).log()
        reference = reference - reference.mean(dim=0)
        torch.testing.assert_close(features[row, : frames[row]], reference, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("mode", ["speakertrip", "kaldi", "speechbrain"])
def test_padding_never_leaks(waves, mode):
    config = FeatureConfig(mode=mode, var_norm=True, preemphasis=0.97)
    frontend = LogMelFrontend(config)
    noisy = waves.clone()
    for row, length in enumerate(LENGTHS):
        noisy[row, length:] = 1e3  # garbage after the valid samples must not matter
    features, frames = frontend(noisy, LENGTHS)
    assert features.shape[1] == frontend.num_frames(int(LENGTHS.max()))
    assert frames.tolist() == frontend.num_frames(LENGTHS).tolist()
    for row, length in enumerate(LENGTHS):
        alone, alone_frames = frontend(waves[row : row + 1, :length])
        assert alone_frames.item() == frames[row]
        torch.testing.assert_close(features[row, : frames[row]], alone[0], rtol=1e-5, atol=1e-4)
        assert not features[row, frames[row] :].any()


def test_int16_input_equals_float_input(waves):
    frontend = LogMelFrontend()
    as_int = (waves.clamp(-1, 1) * 32767).round().to(torch.int16)
    torch.testing.assert_close(frontend(as_int, LENGTHS)[0], frontend(as_int.float() / 32768, LENGTHS)[0])


def test_training_mode_without_augmentation_is_deterministic(waves):
    frontend = LogMelFrontend()
    torch.testing.assert_close(frontend.train()(waves)[0], frontend.eval()(waves)[0])


def test_specaugment_masks_bands_inside_valid_frames(waves):
    config = FeatureConfig(spec_time_masks=2, spec_time_width=5, spec_freq_masks=2, spec_freq_width=4)
    frontend = LogMelFrontend(config).train()
    frames = torch.tensor([100, 50, 20])
    ones = (torch.arange(100)[None, :, None] < frames[:, None, None]).float().expand(3, 100, 80)
    masked = frontend.specaugment(ones, frames, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(masked, frontend.specaugment(ones, frames, generator=torch.Generator().manual_seed(1)))
    for row, count in enumerate(frames):
        zeros = masked[row, :count] == 0
        time_masked, bins_masked = zeros.all(dim=1), zeros.all(dim=0)
        assert time_masked.sum() <= 2 * 5 and bins_masked.sum() <= 2 * 4
        assert torch.equal(zeros, time_masked[:, None] | bins_masked[None, :])  # whole bands, nothing else
        assert not masked[row, count:].any()
    assert (masked[:, :20] == 0).any()
    clean, _ = frontend(waves, LENGTHS, specaugment=False)
    augmented, _ = frontend(waves, LENGTHS)
    assert (augmented == 0).sum() > (clean == 0).sum()
    torch.testing.assert_close(frontend.eval()(waves, LENGTHS)[0], clean)


def test_config_round_trip_and_errors():
    config = FeatureConfig.kaldi(n_mels=64)
    assert FeatureConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"unknown key\(s\) features.n_mel, features.winlen; valid keys in features"):
        FeatureConfig.from_dict({"n_mel": 80, "winlen": 400})
    with pytest.raises(ConfigError, match="mode 'htk'"):
        FeatureConfig(mode="htk")
    with pytest.raises(ConfigError, match="f_max"):
        FeatureConfig(f_max=9000.0)
    with pytest.raises(ConfigError, match="win_length"):
        FeatureConfig(win_length=600)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_gpu_like_cpu(waves):
    frontend = LogMelFrontend()
    cpu, _ = frontend(waves, LENGTHS)
    gpu, frames = frontend.to("cuda")(waves.cuda(), LENGTHS.cuda())
    assert gpu.device.type == "cuda" and frames.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("mode", ["speakertrip", "kaldi", "speechbrain"])
def test_batches_larger_than_one_cpu_pass_equal_rows_alone(mode):
    from speakertrip.features import CPU_ROWS_PER_PASS

    generator = torch.Generator().manual_seed(3)
    rows = 2 * CPU_ROWS_PER_PASS + 3
    waves = torch.randn(rows, 8000, generator=generator) * 0.1
    lengths = torch.randint(2000, 8001, (rows,), generator=generator)
    config = {"kaldi": FeatureConfig.kaldi(), "speechbrain": FeatureConfig.speechbrain()}.get(mode, FeatureConfig())
    frontend = LogMelFrontend(config).eval()
    features, frame_lengths = frontend(waves, lengths)
    for row in range(rows):
        alone, alone_frames = frontend(waves[row:row + 1, :lengths[row]])
        assert frame_lengths[row] == alone_frames[0]
        torch.testing.assert_close(features[row, :alone_frames[0]], alone[0], rtol=1e-4, atol=1e-4)
        assert not features[row, alone_frames[0]:].any()
