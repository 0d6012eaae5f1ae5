"""`speakertrip import SOURCE --out DIR`: a pretrained speaker model as a speakertrip artifact.

SOURCE is a SpeechBrain hub id (``speechbrain/spkrec-ecapa-voxceleb``, fetched with huggingface_hub into its
cache) or a local folder in the hub repository's layout (``hyperparams.yaml`` is read as data, never run), or
``resemblyzer``: the GE2E encoder whose weights the installed ``resemblyzer`` package ships (read as data;
``pip install 'speakertrip[resemblyzer]'``), which works offline.
(The module is not called ``import``: that is a Python keyword.)
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import", help="import a pretrained speaker model (SpeechBrain hub id or folder, resemblyzer) as an artifact",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples: speakertrip import resemblyzer --out models/resemblyzer\n"
               "          speakertrip import speechbrain/spkrec-ecapa-voxceleb --out models/ecapa-vox")
    parser.add_argument("source", help="hub id (owner/name[@revision]), a folder holding hyperparams.yaml and "
                                       "embedding_model.ckpt, or resemblyzer")
    parser.add_argument("--out", type=Path, required=True, help="artifact folder to write")
    parser.add_argument("--embedding-norm", action="store_true",
                        help="fold mean_var_norm_emb into the model (SpeechBrain's encode_batch(normalize=True); "
                             "its verify_batch does not)")
    parser.add_argument("--cache-dir", type=Path, help="huggingface_hub cache (default: HF_HUB_CACHE)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from speakertrip.models.resemblyzer import import_resemblyzer_to_artifact, is_resemblyzer
    from speakertrip.models.speechbrain_hub import import_to_artifact

    if is_resemblyzer(args.source):
        model, out = import_resemblyzer_to_artifact(args.out)
    else:
        model, out = import_to_artifact(args.source, args.out, args.embedding_norm, args.cache_dir)
    features = model.feature_config
    rows = [("source", args.source),
            ("encoder", f"{model.encoder_name} {model.encoder_options}"),
            ("parameters", f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M"),
            ("features", f"{features.mode} mel features, {features.n_mels} mels, {features.sample_rate} Hz"),
            ("embedding", f"{model.embedding_dim}-d" + (", mean_var_norm_emb folded in" if args.embedding_norm else "")),
            ("artifact", str(out))]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    return 0
