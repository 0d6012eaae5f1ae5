"""Exact padding for SpeechBrain's "same" convolutions: a padded row computes what it computes alone."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from speakertrip.features import LogMelFrontend


@contextlib.contextmanager
def exact_padding(model: nn.Module) -> Iterator[None]:
    """Make padded rows of a batch compute exactly what they compute alone.

    SpeechBrain's "same" convolutions reflect-pad the whole batch at its longest row; a shorter
    row then convolves its padding. Inside this context each such convolution is fed an input
    padded per row: mirrored about the row's own last valid frame (the row's valid length is
    taken from the frontend's frame lengths). Outputs at padded frames are meaningless and are
    masked by the encoder's length-aware pooling. Not thread-safe for the duration of the context.
    """
    from speechbrain.nnet.CNN import Conv1d

    frontends = [m for m in model.modules() if isinstance(m, LogMelFrontend)]
    convolutions = [m for m in model.modules() if isinstance(m, Conv1d) and m.padding == "same"
                    and m.padding_mode == "reflect" and m.stride == 1 and m.kernel_size > 1]
    if len(frontends) != 1 or not convolutions:
        yield
        return
    frame_lengths: list[torch.Tensor] = []

    def remember_lengths(module: nn.Module, inputs: tuple, output: tuple) -> None:
        frame_lengths[:] = [output[1]]

    def pad_rows(conv: Conv1d, inputs: tuple) -> tuple:
        x = inputs[0] if conv.skip_transpose else inputs[0].transpose(1, -1)  # (B, C, T)
        half = conv.dilation * (conv.kernel_size - 1) // 2
        total = x.shape[-1]
        lengths = frame_lengths[0].to(x.device).clamp(1, total)[:, None]
        padded = torch.nn.functional.pad(x, (half, half), mode="reflect")  # right for full rows
        tail = lengths + torch.arange(half, device=x.device)[None, :]  # positions n .. n + half - 1
        source = (2 * (lengths - 1) - tail).clamp(0, total - 1)  # mirrored about the row's last frame
        channels = (-1, x.shape[1], -1)
        padded.scatter_(2, (tail + half)[:, None, :].expand(*channels),
                        torch.gather(x, 2, source[:, None, :].expand(*channels)))
        return (padded if conv.skip_transpose else padded.transpose(1, -1),)

    hooks = [frontends[0].register_forward_hook(remember_lengths)]
    hooks += [conv.register_forward_pre_hook(pad_rows) for conv in convolutions]
    for conv in convolutions:
        conv.padding = "valid"
    try:
        yield
    finally:
        for conv in convolutions:
            conv.padding = "same"
        for hook in hooks:
            hook.remove()
