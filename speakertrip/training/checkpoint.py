"""Checkpoints: written atomically, read with ``weights_only=True``; RNG states kept as tensors.

A checkpoint is a dict of tensors and plain containers (no pickled objects): ``model`` (state
dict of the model and any loss parameters), ``optimizer``, ``position`` (epoch, batch within the
epoch, global step), ``rng`` (``{"ranks": [...]}``: every rank's torch CPU and own CUDA
generator states), ``world_size``, ``best``, ``metrics`` and the resolved ``config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from speakertrip.atomic import atomic_write
from speakertrip.errors import FormatError, SpeakertripError
from speakertrip.losses.miners import sampling_miners
from speakertrip.models.artifact import check_finite, load_torch_data


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: a kill never leaves half a file.

    Model weights holding NaN or infinity, and a failed write (a full disk), raise SpeakertripError
    naming ``path``; the previous file stays as it was.
    """
    path = Path(path)
    check_finite(state.get("model", {}), path, "the model of this checkpoint")
    try:
        with atomic_write(path, fsync=True) as file:
            torch.save(dict(state), file)
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError
        cause = error if isinstance(error, OSError) else error.__context__
        if not isinstance(cause, OSError):
            raise
        raise SpeakertripError(f"{path}: could not write the checkpoint ({cause.strerror or cause}); "
                               "the previous file is unchanged") from error
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU with ``weights_only=True`` (never runs code from the file)."""
    path = Path(path)
    if not path.is_file():
        raise SpeakertripError(f"{path}: no such checkpoint")
    state = load_torch_data(path, "a speakertrip checkpoint")
    if not isinstance(state, dict) or "model" not in state:
        raise FormatError("not a speakertrip checkpoint (no 'model' entry)", path)
    return state


def rng_state(device: torch.device | None = None, module: torch.nn.Module | None = None) -> dict[str, Any]:
    """This process's generator states as uint8 tensors: torch's CPU generator and, when ``device`` is a
    GPU, that GPU's (only this process's own device: another job may see fewer GPUs); with ``module``, the
    own generators of its seeded sampling miners (``miner0``, ``miner1``, ... once they have drawn)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    for index, miner in enumerate(sampling_miners(module) if module is not None else []):
        miner_state = miner.generator_state()
        if miner_state is not None:
            state[f"miner{index}"] = miner_state
    return state


def restore_rng_state(state: Mapping[str, Any], device: torch.device | None = None,
                      module: torch.nn.Module | None = None) -> None:
    """Restore what :func:`rng_state` saved; the GPU state goes to ``device`` (when it is a GPU), the miners'
    to the sampling miners of ``module`` (a miner without a saved state starts again from its seed).

    Checkpoints of earlier versions hold a list with every visible GPU's state: the entry of
    ``device``'s index is used when there is one, whatever the number of GPUs visible now.
    """
    torch.set_rng_state(state["torch"])
    for index, miner in enumerate(sampling_miners(module) if module is not None else []):
        miner.set_generator_state(state.get(f"miner{index}"))
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):
        index = device.index or 0
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def average_state_dicts(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating tensors (weights and BatchNorm statistics, in float64 then cast back);
    integer tensors (``num_batches_tracked``) are taken from the last state."""
    if not states:
        raise SpeakertripError("no checkpoints to average")
    keys = set(states[0])
    for state in states[1:]:
        if set(state) != keys:
            raise SpeakertripError(f"checkpoints hold different tensors: {sorted(keys ^ set(state))[:5]}")
    averaged = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            total = sum(state[key].to(torch.float64) for state in states)
            averaged[key] = (total / len(states)).to(last.dtype)
        else:
            averaged[key] = last.clone()
    return averaged


def interpolate_state_dicts(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor],
                            weight: float) -> dict[str, torch.Tensor]:
    """``start + weight × (end − start)`` for floating tensors (in float64, cast back to ``end``'s dtype);
    integer tensors (``num_batches_tracked``) are taken from ``end``. Weight-space ensembling of a
    fine-tuned model with its starting point (WiSE-FT, Wortsman et al., 2022) is ``weight`` in (0, 1)."""
    if set(start) != set(end):
        raise SpeakertripError(f"the two models hold different tensors: {sorted(set(start) ^ set(end))[:5]}")
    mixed = {}
    for key, value in end.items():
        if value.is_floating_point():
            first = start[key].to(torch.float64)
            mixed[key] = (first + weight * (value.to(torch.float64) - first)).to(value.dtype)
        else:
            mixed[key] = value.clone()
    return mixed
