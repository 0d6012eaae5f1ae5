"""`speakertrip export --model M --onnx out.onnx [--torchscript out.pt]`: models for serving."""

from __future__ import annotations

import argparse
from pathlib import Path

from speakertrip.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a model to ONNX and/or TorchScript (waveform in, embedding out)")
    parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
    parser.add_argument("--onnx", type=Path, help="write an ONNX model here (input 'waveform' (1, samples))")
    parser.add_argument("--torchscript", type=Path, help="write a traced TorchScript module here")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: speakertrip.extraction.export.ONNX_OPSET)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.onnx is None and args.torchscript is None:
        raise ConfigError("nothing to do: give --onnx PATH and/or --torchscript PATH")
    from speakertrip.models import load_model
    from speakertrip.extraction.export import ONNX_OPSET, export_onnx, export_torchscript

    model = load_model(args.model)
    written = []
    if args.onnx is not None:
        written.append(("onnx", export_onnx(model, args.onnx, opset=args.opset or ONNX_OPSET)))
    if args.torchscript is not None:
        written.append(("torchscript", export_torchscript(model, args.torchscript)))
    print(f"{'format':<12} {'size':>9}  path")
    for kind, path in written:
        print(f"{kind:<12} {path.stat().st_size / 1e6:>7.1f} MB  {path}")
    print(f"input: waveform (1, samples) float32 at {model.sample_rate} Hz; output: embedding (1, {model.embedding_dim})")
    return 0
