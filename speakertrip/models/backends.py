"""Inference backends: how :func:`~speakertrip.models.embed_many` computes a padded batch of segments.

Every backend maps ``(waveforms (B, T), lengths (B,))`` to L2-normalised ``(B, D)`` float32
embeddings, each row as if it ran alone; they differ in speed and in how close they stay to the
model computed in float32. The tolerance below bounds the max |difference| of unit embeddings
measured by ``scripts/bench_embed.py`` (bfloat16: 1e-3 on ECAPA-512 with random weights, 2e-3 on a
trained 128-d demo ECAPA; int8: 5e-3 and 7e-3); the EER changes are in the README's Speed section
(bfloat16 none on the demo's lists; int8 0 to +0.10 points there from run to run, and slower than
bfloat16, so it is not the default):

============  =========================================================================  ===========
backend       computes                                                                   tolerance
============  =========================================================================  ===========
float32       ECAPA: the frozen inference copy (:mod:`~speakertrip.models.inference_ecapa`);  1e-5
              other encoders: the model itself under exact per-row padding
bfloat16      the inference copy in bfloat16 (oneDNN GEMMs and convolutions on a CPU; the  1e-2
              pooling's weighted sums of frames centred on their mean accumulate in
              float32); fast on CPUs with native bfloat16 (AMX / AVX512-BF16) and on GPUs
int8          the inference copy with every weight matrix in int8 (per output channel)    3e-2
              and inputs quantised on the fly (dynamic quantisation)
onnxruntime   the encoder exported to ONNX and run by ONNX Runtime one segment at a time   1e-5
              (the features from the model's own frontend; needs the ``export`` extra)
eager         the model itself under exact per-row padding (the reference)                 1e-5
auto          ``bfloat16`` on a CPU with native bfloat16 and an ECAPA encoder, otherwise   --
              ``float32`` (the default of ``embed``, ``Verifier`` and ``serve``); the
              environment variable ``SPEAKERTRIP_BACKEND`` names another backend for it
============  =========================================================================  ===========

>>> from speakertrip.models import load_model
>>> from speakertrip.testing import speech_like, tiny_model_artifact
>>> model = load_model(tiny_model_artifact())
>>> backend = select_backend(model, "float32")
>>> backend.name, backend.parallel
('float32', True)
"""

from __future__ import annotations

import io
import os
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speakertrip.errors import ConfigError
from speakertrip.models.artifact import weights_stamp
from speakertrip.models.inference_ecapa import foldable, inference_model

BACKENDS = ("auto", "float32", "bfloat16", "int8", "onnxruntime", "eager")
BACKEND_VARIABLE = "SPEAKERTRIP_BACKEND"  # what ``auto`` means when set (e.g. float32 for float32 results everywhere)
ONNX_OPSET = 18

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Backend:
    """A chosen backend: ``forward(waveforms (B, T), lengths (B,)) -> (B, D)`` unit rows.

    ``parallel``: several batches may run at once in threads (one stream per CPU thread);
    ``patches_model``: ``forward`` needs :func:`~speakertrip.models.padding.exact_padding` around the run.
    """

    name: str
    forward: Forward
    parallel: bool
    patches_model: bool = False


def native_bfloat16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (a GPU, or a CPU with AMX or AVX512-BF16)."""
    device = torch.device(device)
    if device.type != "cpu":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check is not None and check() for check in checks)


def resolve_backend(model: nn.Module, name: str = "auto", device: torch.device | str | None = None) -> str:
    """The backend ``name`` stands for with ``model`` on ``device`` (``auto`` resolved); ConfigError when
    it is unknown or cannot run this model there."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    folded = foldable(model)
    preset = os.environ.get(BACKEND_VARIABLE, "auto")
    if name == "auto" and preset != "auto":
        if preset not in BACKENDS:
            raise ConfigError(f"environment variable {BACKEND_VARIABLE}={preset!r} is not a backend; valid: "
                              f"{', '.join(BACKENDS)}")
        name = preset
    if name == "auto":
        return "bfloat16" if folded and device.type == "cpu" and native_bfloat16(device) else "float32"
    if name in ("bfloat16", "int8") and not folded:
        raise ConfigError(f"backend {name!r} needs an ECAPA encoder (its inference copy); this model's encoder is "
                          f"{getattr(model, 'encoder_name', type(getattr(model, 'encoder', model)).__name__)!r}: "
                          "use backend 'float32' or 'onnxruntime'")
    if name in ("int8", "onnxruntime") and device.type != "cpu":
        raise ConfigError(f"backend {name!r} runs on a CPU only, not on {device}; use 'float32' or 'bfloat16'")
    if name == "onnxruntime" and getattr(getattr(model, "feature_config", None), "mode", None) == "ge2e":
        raise ConfigError("backend 'onnxruntime' cannot run a ge2e-frontend model (its frames after the end need "
                          "the frame lengths); use 'float32'")
    return name


def select_backend(model: nn.Module, name: str = "auto", device: torch.device | str | None = None) -> Backend:
    """The :class:`Backend` that runs ``model`` (in eval mode, on ``device``) as ``name`` says."""
    name = resolve_backend(model, name, device)
    if name in ("float32", "bfloat16", "int8"):
        fast = inference_model(model, name)
        if fast is not None:
            return Backend(name, fast, parallel=True)
    if name == "onnxruntime":
        return Backend(name, OnnxEncoder.of(model), parallel=True)
    return Backend(name, model, parallel=False, patches_model=True)  # eager, or float32 of a non-ECAPA encoder


class OnnxEncoder:
    """The model's frontend (batched, in torch), then its encoder in ONNX Runtime one unpadded row at a time.

    ``__call__(waveforms (B, T), lengths (B,) | None) -> (B, D)`` unit rows. The encoder is exported
    in memory (TorchScript-based exporter, dynamic frame axis) once per model and weights; the
    session runs on one thread, so that each of ``embed_many``'s streams gets its own core.
    """

    _cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, model: nn.Module):
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError("backend 'onnxruntime' needs onnxruntime: pip install 'speakertrip[export]'") from None
        self.frontend = model.frontend
        example = torch.randn(1, 200, model.feature_config.n_mels)
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on SpeechBrain's length masks: rows are unpadded here
            torch.onnx.export(model.encoder, (example,), buffer, input_names=["features"], output_names=["embedding"],
                              dynamic_axes={"features": {1: "frames"}}, opset_version=ONNX_OPSET, dynamo=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    @classmethod
    def of(cls, model: nn.Module) -> OnnxEncoder:
        """The cached session of ``model``, exported again when a weight changed."""
        stamp = weights_stamp(model.state_dict())
        cached = cls._cache.get(model)
        if cached is None or cached[0] != stamp:
            cached = (stamp, cls(model))
            cls._cache[model] = cached
        return cached[1]

    def __call__(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        features, frame_lengths = self.frontend(waveforms, lengths)
        frames = [features.shape[1]] * len(features) if frame_lengths is None else frame_lengths.tolist()
        rows = [self.session.run(None, {"features": features[i: i + 1, :n].numpy()})[0].reshape(1, -1)
                for i, n in enumerate(frames)]
        return F.normalize(torch.from_numpy(np.concatenate(rows)), dim=-1)
