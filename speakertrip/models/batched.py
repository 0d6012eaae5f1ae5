"""Embedding extraction: files, arrays or tensors → L2-normalised embeddings, in length-bucketed batches.

A file gives the same embedding alone or inside a batch (to ~1e-6): the frontend keeps padding
out of its statistics, the encoder's pooling gets the valid lengths, and every "same"-padded
convolution reflects at each row's own end instead of seeing its neighbours' padding. The backend
(:mod:`speakertrip.models.backends`) computes the batches: by default an ECAPA encoder runs through
its frozen inference copy (:mod:`speakertrip.models.inference_ecapa`: batch norm folded, per-row
reflection by index), in bfloat16 on CPUs that multiply it natively, on a CPU one batch per
thread at a time; other encoders run as they are inside :func:`exact_padding`. Long files can be cut into
equal chunks whose embeddings are averaged; leading and trailing silence can be trimmed by
frame energy.

>>> import tempfile
>>> import speakertrip as st
>>> from speakertrip.testing import make_voxceleb_tree, tiny_model_artifact
>>> files = sorted((make_voxceleb_tree(tempfile.mkdtemp(), num_speakers=2) / "wav").rglob("*.wav"))
>>> model = st.load_model(tiny_model_artifact())
>>> model.embed(files[0]).shape
(192,)
>>> model.embed_batch(files[:3]).shape
(3, 192)
"""

from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from speakertrip.audio import audio_info, load_audio, prepare_waveform
from speakertrip.audio.trim import trim_silence
from speakertrip.data.datasets import bucket_batches
from speakertrip.data.manifest import Utterance
from speakertrip.errors import AudioError, ConfigError
from speakertrip.models.backends import select_backend
from speakertrip.models.padding import exact_padding

Item = Union[str, Path, Utterance, np.ndarray, torch.Tensor]
MIN_SECONDS = 0.1  # shorter audio gives too few frames for the encoders' convolutions


def split_chunks(length: int, chunk: int) -> list[tuple[int, int]]:
    """Split ``length`` samples into ``ceil(length / chunk)`` equal (start, end) spans, none longer than ``chunk``."""
    count = max(1, -(-length // chunk))
    edges = np.linspace(0, length, count + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def item_duration(item: Item, sample_rate: int | None) -> float:
    """Seconds of audio of a path, manifest utterance, or array or tensor at ``sample_rate`` (no decoding)."""
    if isinstance(item, Utterance):
        return item.duration
    if isinstance(item, (str, Path)):
        return audio_info(item).duration
    if sample_rate is None:
        raise ConfigError("an array or tensor needs its sample_rate= (Hz)")
    shape = tuple(item.shape)
    return (max(shape) if len(shape) <= 2 else 0) / sample_rate


def _load(item: Item, model_rate: int, sample_rate: int | None, index: int) -> np.ndarray:
    if isinstance(item, Utterance):
        return load_audio(item.path, model_rate)
    if isinstance(item, (str, Path)):
        return load_audio(item, model_rate)
    return prepare_waveform(item, sample_rate, model_rate, name=f"item {index} ({type(item).__name__})")


def embed_many(model: nn.Module, items: Sequence[Item], *, sample_rate: int | None = None,
               batch_seconds: float | None = None, max_batch_size: int = 64, device: str | torch.device | None = None,
               num_threads: int | None = None, trim_db: float | None = None, chunk_seconds: float | None = None,
               loader_threads: int = 4, progress: bool = False, streams: int | None = None,
               backend: str = "auto") -> np.ndarray:
    """Embed many utterances in batches of similar duration; returns float32 (N, D), rows L2-normalised.

    Parameters
    ----------
    model : an ``EmbeddingModel`` (``forward(waveforms (B, T), lengths (B,)) -> (B, D)``, ``.sample_rate``)
    items : paths, manifest ``Utterance`` s, or 1-D/2-D arrays or tensors at ``sample_rate``
    batch_seconds : padded audio per forward pass (batch size × longest item), in seconds; default 160 on a
        GPU, 30 on a CPU (a pass has a fixed cost of several ms; 20-40 s batches measured alike, 10 s 10-15 %
        slower on ECAPA-512)
    max_batch_size : at most this many segments per forward pass
    device : run there (the model is moved); default: where the model is
    num_threads : CPU threads while embedding (torch's setting is restored after); default: torch's
    trim_db : cut leading/trailing audio quieter than this many dB below the loudest frame
    chunk_seconds : cut longer items into equal chunks of at most this length, average their embeddings
    loader_threads : files read (and resampled) in parallel while the model computes
    progress : show a tqdm bar
    streams : batches computed at once on CPU, sharing the ``num_threads`` threads; default: one per
        thread (independent batches scale better than one batch split over threads, and a busy core
        stalls one stream instead of every operation). Always 1 on a GPU.
    backend : how batches are computed (:data:`speakertrip.models.backends.BACKENDS`): ``auto`` (bfloat16 on a
        CPU with native bfloat16 and an ECAPA encoder, else float32), ``float32`` (exact to float32 rounding),
        ``bfloat16``, ``int8``, ``onnxruntime``, ``eager`` (the model itself); tolerances in that module

    >>> from speakertrip.models import load_model
    >>> from speakertrip.testing import speech_like, tiny_model_artifact
    >>> model = load_model(tiny_model_artifact())
    >>> embed_many(model, [speech_like(1, 1.5), speech_like(2, 0.8)], sample_rate=16000, trim_db=40).shape
    (2, 192)
    """
    model_rate = int(model.sample_rate)
    if chunk_seconds is not None and chunk_seconds < 2 * MIN_SECONDS:
        raise ConfigError(f"chunk_seconds must be at least {2 * MIN_SECONDS} s or None, got {chunk_seconds}")
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    threads, was_training = torch.get_num_threads(), model.training
    model.eval()
    chosen = select_backend(model, backend, device)
    runner = chosen.forward
    batch_seconds = batch_seconds or (30.0 if device.type == "cpu" else 160.0)
    streams = 1 if not chosen.parallel or device.type != "cpu" else max(1, streams or num_threads or threads)
    try:
        with ThreadPoolExecutor(max(1, loader_threads)) as loader, contextlib.ExitStack() as stack:
            durations = list(loader.map(lambda item: item_duration(item, sample_rate), items))
            if chunk_seconds is not None:
                durations = [min(duration, chunk_seconds) for duration in durations]  # chunks batch together
            batches = bucket_batches(durations, max_batch_seconds=batch_seconds, max_batch_size=max_batch_size)
            streams = max(1, min(streams, len(batches)))  # one batch gets every thread
            torch.set_num_threads(max(1, (num_threads or threads) // streams))
            if chosen.patches_model:
                stack.enter_context(exact_padding(model))  # patches the model: one stream only
            workers = stack.enter_context(ThreadPoolExecutor(streams))  # shut down (drained) first

            def embed_batch(batch: list[int], loads: list) -> np.ndarray:
                waves = [future.result() for future in loads]
                with torch.inference_mode():
                    return _embed_waves(runner, waves, batch, items, model_rate, device, trim_db,
                                        chunk_seconds, batch_seconds, max_batch_size)

            def submit(batch: list[int]) -> Future:
                loads = [loader.submit(_load, items[i], model_rate, sample_rate, i) for i in batch]
                return workers.submit(embed_batch, batch, loads)

            output = np.empty((len(items), getattr(model, "embedding_dim", 0)), np.float32)
            with tqdm(total=len(items), disable=not progress, unit="utt", desc="embed") as bar:
                queued = deque(submit(batch) for batch in batches[:streams + 1])  # read ahead of the model
                for number, batch in enumerate(batches):
                    rows = queued.popleft().result()
                    if number + streams + 1 < len(batches):
                        queued.append(submit(batches[number + streams + 1]))
                    if output.shape[1] != rows.shape[1]:
                        output = np.empty((len(items), rows.shape[1]), np.float32)
                    output[batch] = rows
                    bar.update(len(batch))
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return output


def _embed_waves(model: Callable, waves: list[np.ndarray], batch: list[int], items: Sequence[Item], rate: int,
                 device: torch.device, trim_db: float | None, chunk_seconds: float | None,
                 batch_seconds: float, max_batch_size: int) -> np.ndarray:
    """Trim and chunk the loaded waves, run the segments in padded passes, average chunks per wave."""
    segments, owners = [], []
    for row, (wave, index) in enumerate(zip(waves, batch)):
        if trim_db is not None:
            wave = trim_silence(wave, rate, trim_db)
        if len(wave) < MIN_SECONDS * rate:
            trimmed = f" after trimming silence (trim_db={trim_db}; lower it or turn trimming off)" if trim_db else ""
            raise AudioError(f"{_name(items[index], index)}: {len(wave) / rate:.3f} s of audio{trimmed}; "
                             f"embeddings need at least {MIN_SECONDS} s")
        spans = split_chunks(len(wave), int(chunk_seconds * rate)) if chunk_seconds else [(0, len(wave))]
        segments += [wave[start:end] for start, end in spans]
        owners += [row] * len(spans)
    passes = bucket_batches([len(segment) / rate for segment in segments], batch_seconds, max_batch_size)
    embeddings = [None] * len(segments)
    for chosen in passes:
        lengths = torch.tensor([len(segments[i]) for i in chosen], dtype=torch.int64)
        padded = torch.zeros(len(chosen), int(lengths.max()))
        for row, i in enumerate(chosen):
            padded[row, : len(segments[i])] = torch.from_numpy(segments[i])
        result = model(padded.to(device, non_blocking=True), lengths.to(device)).float().cpu().numpy()
        for row, i in enumerate(chosen):
            embeddings[i] = result[row]
    summed = np.zeros((len(waves), embeddings[0].shape[0]), np.float64)
    np.add.at(summed, owners, np.stack(embeddings))
    return (summed / np.linalg.norm(summed, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def _name(item: Item, index: int) -> str:
    if isinstance(item, Utterance):
        return item.path
    return str(item) if isinstance(item, (str, Path)) else f"item {index}"


def embed_one(model: nn.Module, x: Item, sample_rate: int | None = None, *, trim_db: float | None = None,
              chunk_seconds: float | None = None, backend: str = "auto") -> np.ndarray:
    """Embed one utterance (a path, or a 1-D/2-D array or tensor at ``sample_rate``); float32 (D,), unit norm.

    >>> from speakertrip.models import load_model
    >>> from speakertrip.testing import speech_like, tiny_model_artifact
    >>> embed_one(load_model(tiny_model_artifact()), speech_like(1, 1.0), sample_rate=16000).shape
    (192,)
    """
    if isinstance(x, (list, tuple)):
        raise ConfigError("embed_one takes one utterance; use embed_batch / embed_many for a list")
    return embed_many(model, [x], sample_rate=sample_rate, trim_db=trim_db, chunk_seconds=chunk_seconds,
                      loader_threads=1, backend=backend)[0]
