"""Export a model for serving without speakertrip: ONNX (dynamic time axis) and TorchScript.

The exported graph takes a waveform ``(1, T)`` float32 in [-1, 1] at the model's sample rate
and returns the L2-normalised embedding ``(1, D)``: the frontend is included. ONNX has no
complex numbers, so :class:`ExportableFrontend` computes the same log-mel features as
:class:`speakertrip.features.LogMelFrontend` with the framing, windowing and DFT folded into
one strided convolution (exact up to float32 rounding); it handles one unpadded utterance.

>>> import tempfile
>>> import onnxruntime
>>> from speakertrip.models import load_model
>>> from speakertrip.testing import speech_like, tiny_model_artifact
>>> onnx_path = Path(tempfile.mkdtemp()) / "model.onnx"
>>> export_onnx(load_model(tiny_model_artifact(encoder="tdnn")), onnx_path).name
'model.onnx'
>>> session = onnxruntime.InferenceSession(str(onnx_path))
>>> wave = speech_like(speaker=1, duration=1.0)
>>> session.run(None, {"waveform": wave[None]})[0].shape
(1, 512)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from speakertrip.features import GE2E_TARGET_DBFS, SPEECHBRAIN_TOP_DB, FeatureConfig, LogMelFrontend

ONNX_OPSET = 18


def dft_kernel(config: FeatureConfig) -> torch.Tensor:
    """Framing + window (+ Kaldi's DC removal and pre-emphasis) + real DFT as a conv kernel (2F, 1, K)."""
    bins = config.n_fft // 2 + 1
    window = LogMelFrontend(config).window.double()
    kaldi = config.mode == "kaldi"
    size = config.win_length if kaldi else config.n_fft
    offset = 0 if kaldi else (config.n_fft - config.win_length) // 2  # torch.stft centres the window
    per_sample = torch.zeros(config.win_length, size, dtype=torch.float64)  # window position → kernel tap
    per_sample[:, offset: offset + config.win_length] = torch.eye(config.win_length, dtype=torch.float64)
    linear = torch.eye(config.win_length, dtype=torch.float64)
    if kaldi:  # frame - mean(frame), then x[i] - a * x[i - 1] with x[-1] = x[0]
        linear = linear - 1.0 / config.win_length
        if config.preemphasis:
            shift = torch.diag(torch.ones(config.win_length - 1, dtype=torch.float64), -1)
            shift[0, 0] = 1.0
            linear = (torch.eye(config.win_length, dtype=torch.float64) - config.preemphasis * shift) @ linear
    samples = torch.arange(config.win_length, dtype=torch.float64)
    angle = 2 * math.pi * torch.arange(bins, dtype=torch.float64)[:, None] * samples[None, :] / config.n_fft
    dft = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window[None, :]  # (2F, win)
    return (dft @ linear @ per_sample).float()[:, None, :]


class ExportableFrontend(nn.Module):
    """:class:`LogMelFrontend` for one unpadded waveform, in ONNX-friendly real arithmetic.

    forward(waveform (1, T)) -> features (1, frames, n_mels)
    """

    def __init__(self, config: FeatureConfig):
        super().__init__()
        self.config = config
        self.register_buffer("kernel", dft_kernel(config))
        self.register_buffer("mel_banks", LogMelFrontend(config).mel_banks.clone())

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        config = self.config
        x = waveform * config.waveform_scale
        if config.mode == "ge2e":  # Resemblyzer's volume normalisation, and the frames after the end (features.py)
            gain = 10.0 ** (GE2E_TARGET_DBFS / 20.0) / x.square().mean().sqrt().clamp(min=1e-20)
            x = F.pad(x * gain.clamp(min=1.0), (0, config.n_fft // 2 + config.hop_length))
        if config.mode != "kaldi":
            if config.preemphasis:
                x = x - config.preemphasis * F.pad(x[:, :-1], (1, 0))
            x = F.pad(x, (config.n_fft // 2, config.n_fft // 2))
        spectrum = F.conv1d(x[:, None, :], self.kernel, stride=config.hop_length)  # (1, 2F, frames)
        bins = self.kernel.shape[0] // 2
        power = spectrum[:, :bins].square() + spectrum[:, bins:].square()
        mel = power.transpose(1, 2) @ self.mel_banks
        if config.mode == "speechbrain":
            features = 10.0 * torch.log10(mel.clamp(min=config.log_floor))
            features = torch.maximum(features, features.amax(dim=(1, 2), keepdim=True) - SPEECHBRAIN_TOP_DB)
        elif config.mode == "kaldi":
            features = mel.clamp(min=config.log_floor).log()
        elif config.mode == "ge2e":
            features = mel
        else:
            features = (mel + config.log_floor).log()
        if config.mean_norm or config.var_norm:
            features = features - features.mean(dim=1, keepdim=True)
        if config.var_norm:
            features = features / features.square().mean(dim=1, keepdim=True).sqrt().clamp(min=1e-10)
        return features


class WaveformEmbedder(nn.Module):
    """Waveform (1, T) → L2-normalised embedding (1, D): the exportable frontend and the model's encoder."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.frontend = ExportableFrontend(model.feature_config)
        self.encoder = model.encoder

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        lengths = None
        if self.frontend.config.mode == "ge2e":  # its frontend adds frames after the end: give the signal's own
            frames = waveform.shape[1] // self.frontend.config.hop_length + 1
            lengths = waveform.new_ones(1, dtype=torch.int64) * frames
        return F.normalize(self.encoder(self.frontend(waveform), lengths), dim=-1)


def _example(model: nn.Module, seconds: float = 2.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(1, int(seconds * model.sample_rate), generator=generator)


def export_onnx(model: nn.Module, path: str | Path, opset: int = ONNX_OPSET) -> Path:
    """Write ``model`` as ONNX: input ``waveform`` (1, samples), output ``embedding`` (1, D); returns the path.

    Uses the TorchScript-based exporter (``dynamo=False``), whose ``dynamic_axes`` handles the
    encoders' length-dependent shapes; weights are stored inside the one file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = WaveformEmbedder(model).cpu().eval()
    with torch.no_grad():
        torch.onnx.export(wrapper, (_example(model),), str(path), input_names=["waveform"],
                          output_names=["embedding"], dynamic_axes={"waveform": {1: "samples"}},
                          opset_version=opset, dynamo=False)
    return path


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` as a traced TorchScript module (``torch.jit.load(path)(waveform (1, T))``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = WaveformEmbedder(model).cpu().eval()
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (_example(model),), check_inputs=[(_example(model, 3.1),)])
    traced.save(str(path))
    return path
