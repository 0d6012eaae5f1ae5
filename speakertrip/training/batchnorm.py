"""Re-estimate a model's BatchNorm statistics on other data (``torch.optim.swa_utils.update_bn`` on audio crops).

A speaker encoder's BatchNorm running statistics are part of what it learned about a domain: a model
fine-tuned on new speakers keeps working on its original domain when its statistics are re-estimated
there afterwards (``speakertrip finetune --source-statistics``; recipes/finetune/README.md measures it).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from speakertrip.audio.io import read_crop, to_float
from speakertrip.data.manifest import Utterance

CROPS = 2048  # crops per re-estimation: with 512, the statistics' noise reached the EER (recipes/finetune/README.md)


def batch_norms(module: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``module``, in module order."""
    return [child for child in module.modules() if isinstance(child, nn.modules.batchnorm._BatchNorm)]


def crop_batches(utterances: Sequence[Utterance], crop_seconds: float, sample_rate: int, batch_size: int = 32,
                 limit: int = CROPS, seed: int = 0) -> Iterator[torch.Tensor]:
    """(B, T) float32 batches of one random ``crop_seconds`` crop from each of at most ``limit`` utterances
    (drawn with ``seed``); a shorter utterance is repeated to the crop length."""
    rng = np.random.default_rng(seed)
    chosen = [utterances[index] for index in rng.permutation(len(utterances))[:limit]]
    length = round(crop_seconds * sample_rate)
    for first in range(0, len(chosen), batch_size):
        crops = []
        for utterance in chosen[first:first + batch_size]:
            frames = round(utterance.duration * sample_rate)
            start = int(rng.integers(0, frames - length + 1)) if frames > length else 0
            crop = to_float(torch.from_numpy(read_crop(utterance.path, start, length, sample_rate)))
            crops.append(crop.repeat(-(-length // max(1, len(crop))))[:length])
        yield torch.stack(crops)


def reestimate_batchnorm(model: nn.Module, utterances: Sequence[Utterance], crop_seconds: float, sample_rate: int,
                         device: torch.device | str = "cpu", limit: int = CROPS, seed: int = 0) -> int:
    """Replace every BatchNorm layer's running statistics of ``model`` (waveforms → embeddings) by their
    average over crops of at most ``limit`` ``utterances``; weights stay as they are. Returns the number of
    crops used. Fewer crops make noisy statistics: re-estimated on 512 crops drawn with another seed, a
    fine-tuned demo model's EER moved by up to 0.4 points; on 2048, by 0.06 (recipes/finetune/README.md)."""
    batches = crop_batches(utterances, crop_seconds, sample_rate, limit=limit, seed=seed)  # streamed, not held
    torch.optim.swa_utils.update_bn(batches, model, device=torch.device(device))
    model.eval()
    return min(len(utterances), limit)  # crop_batches draws one crop from each of that many
