import numpy as np
import pytest
import torch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

from speakertrip.models import EmbeddingModel
from speakertrip.models.batched import embed_many
from speakertrip.features import FeatureConfig
from speakertrip.models.inference_ecapa import (InferenceEcapa, _centred, _softmax_moments_low,
                                               _uniform_moments_low, inference_model, reflect_edges,
                                               reflect_taps)
from speakertrip.testing import randomise_batch_norms, speech_like

pytestmark = pytest.mark.usefixtures("one_thread")


def test_reflect_taps_match_padding_each_row_alone():
    lengths = torch.tensor([17, 5, 9, 17, 12])
    for kernel, dilation in [(3, 1), (3, 2), (3, 4), (5, 1)]:
        taps = reflect_taps(lengths, 17, kernel, dilation)
        assert taps.shape == (5, 17, kernel) and taps.min() >= 0 and taps.max() <= 16
        half = dilation * (kernel - 1) // 2
        for row, n in enumerate(lengths.tolist()):
            padded = np.pad(np.arange(n), half, mode="reflect")  # what one unpadded row convolves
            for t in range(n):
                expected = [padded[t + j * dilation] for j in range(kernel)]
                assert taps[row, t].tolist() == expected, (kernel, dilation, row, t)


def test_reflect_edges_make_a_buffer_that_pads_each_row_alone():
    lengths = torch.tensor([17, 5, 9, 17, 3])
    for half in (1, 2, 4):
        edges, sources = reflect_edges(lengths, 17, half)
        assert edges.shape == sources.shape == (5, 2 * half)
        buffer = np.full((5, 17 + 2 * half), -1)
        buffer[:, half: half + 17] = np.arange(17)
        rows = np.arange(5)[:, None]
        buffer[rows, edges.numpy()] = buffer[rows, sources.numpy()]
        for row, n in enumerate(lengths.tolist()):
            # what one unpadded row convolves (np.pad reflects again when half >= n; the taps clamp instead)
            expected = np.pad(np.arange(n), half, mode="reflect") if half < n else None
            if expected is not None:
                assert buffer[row, : n + 2 * half].tolist() == expected.tolist(), (half, row)
            taps = reflect_taps(lengths, 17, 3, half)[row, :n]  # every tap of a valid frame agrees
            np.testing.assert_array_equal(buffer[row, np.arange(n)[:, None] + half * np.arange(3)], taps.numpy())


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("bounded", [True, False])
def test_low_precision_pooling_moments_match_a_brute_force_softmax(dtype, tolerance, bounded):
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([7, 3, 5])
    mask = torch.arange(7)[None] < lengths[:, None]
    r = (5.0 + torch.rand(3, 7, 4, generator=generator)).to(dtype)  # a large mean: centring keeps bfloat16 exact
    scale = 4.0 if bounded else 60.0  # beyond 40 the scores need the running maximum (exp would overflow)
    scores = (scale * torch.randn(3, 7, 4, generator=generator)).clamp(-scale, scale).to(dtype)
    r[~mask], scores[~mask] = 1e3, 1e4  # padded frames must not reach the moments (exp overflows there)
    weights = (mask / lengths[:, None])[..., None].to(dtype)
    centre, centred = _centred(r, weights)
    mean, var = _uniform_moments_low(centre, centred, weights)
    softmax_mean, softmax_var = _softmax_moments_low(centre, centred, scores.clone(), mask, bounded)
    for row, n in enumerate(lengths.tolist()):
        x, s = r[row, :n].double(), scores[row, :n].double()
        w = s.softmax(dim=0)
        torch.testing.assert_close(mean[row].double(), x.mean(dim=0), atol=tolerance, rtol=0)
        torch.testing.assert_close(var[row].double(), x.var(dim=0, unbiased=False), atol=tolerance, rtol=0)
        expected = (w * x).sum(dim=0)
        torch.testing.assert_close(softmax_mean[row].double(), expected, atol=tolerance, rtol=0)
        torch.testing.assert_close(softmax_var[row].double(), (w * (x - expected) ** 2).sum(dim=0), atol=tolerance,
                                   rtol=0)


@pytest.mark.parametrize("global_context", [True, False])
def test_equals_speechbrain_lobe_on_each_row_alone(global_context):
    torch.manual_seed(1)
    # unequal channels give the SE-Res2Net blocks their shortcut convolutions
    lobe = randomise_batch_norms(ECAPA_TDNN(20, channels=[32, 48, 48, 48, 96], lin_neurons=24,
                                            attention_channels=16, se_channels=8, res2net_scale=4,
                                            global_context=global_context))
    fast = InferenceEcapa(lobe).eval()
    features = torch.randn(4, 41, 20)
    lengths = torch.tensor([41, 23, 12, 40])
    with torch.inference_mode():
        batched = fast(features, lengths)
        alone = torch.cat([lobe(features[i: i + 1, :n])[:, 0] for i, n in enumerate(lengths.tolist())])
        full = fast(features[:1], None)
    assert batched.shape == (4, 24) and fast.embedding_dim == 24
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, alone[:1], atol=1e-5, rtol=1e-5)


def test_inference_model_is_cached_and_follows_weight_changes():
    torch.manual_seed(2)
    model = randomise_batch_norms(EmbeddingModel(FeatureConfig(n_mels=24), "ecapa", {"channels": 32}))
    fast = inference_model(model)
    assert inference_model(model) is fast and fast.embedding_dim == 192 and fast.sample_rate == 16000
    waves = torch.from_numpy(np.stack([speech_like(3, 1.2), np.pad(speech_like(4, 0.7), (0, 8000))]))
    lengths = torch.tensor([19200, 11200])
    with torch.inference_mode():
        expected = torch.cat([model(waves[i: i + 1, :n]) for i, n in enumerate(lengths.tolist())])
        torch.testing.assert_close(fast(waves, lengths), expected, atol=1e-5, rtol=1e-5)
        model.encoder.fc.conv.weight.mul_(-1.0)  # an in-place change (as an optimiser step makes)
        rebuilt = inference_model(model)
        assert rebuilt is not fast
        torch.testing.assert_close(rebuilt(waves[:1], lengths[:1]), model(waves[:1, :19200]), atol=1e-5, rtol=1e-5)
    tdnn = EmbeddingModel(FeatureConfig(n_mels=24), "tdnn", {"channels": 64, "stats_channels": 96})
    assert inference_model(tdnn) is None


def test_streams_and_unoptimised_path_give_the_same_embeddings():
    torch.manual_seed(3)
    model = randomise_batch_norms(EmbeddingModel(FeatureConfig(n_mels=24), "ecapa", {"channels": 32}))
    rng = np.random.default_rng(4)
    waves = [speech_like(i, float(rng.uniform(0.3, 1.5))) for i in range(9)]
    two = embed_many(model, waves, sample_rate=16000, num_threads=2, batch_seconds=2.0, backend="float32")
    assert torch.get_num_threads() == 1  # restored
    one = embed_many(model, waves, sample_rate=16000, num_threads=1, streams=1, batch_seconds=2.0, backend="float32")
    plain = embed_many(model, waves, sample_rate=16000, backend="eager", batch_seconds=2.0)
    np.testing.assert_array_equal(two, one)  # a row's result does not depend on which stream ran it
    np.testing.assert_allclose(two, plain, atol=1e-5)
    with torch.inference_mode():
        alone = np.stack([model(torch.from_numpy(wave)[None]).numpy()[0] for wave in waves])
    np.testing.assert_allclose(two, alone, atol=1e-5)
