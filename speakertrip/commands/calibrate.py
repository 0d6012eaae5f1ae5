"""`speakertrip calibrate`: train a score-to-LLR calibration.

Two forms:

- ``speakertrip calibrate DEV_SCORES --out cal.json``: on a labelled score file, for ``score``/``metrics``;
- ``speakertrip calibrate --model M --trials T (--data DIR | --embeddings E) --out M2``: a calibrated
  copy of a model artifact (LLRs and operating points for the Verifier); ``M`` is left unchanged. Without
  ``--trials`` a trial list is generated over the labelled ``--data`` (as ``finetune`` makes its dev list).
  It prints, per operating point, the dev speakers and speaker pairs behind it and speaker-bootstrap
  intervals of its threshold and of the rate it realises on new speakers of the dev domain.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from speakertrip.commands.metrics import probability
from speakertrip.commands import DATA_HELP

if TYPE_CHECKING:
    from speakertrip.evaluation.dev_calibration import DevCalibration


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="train a score-to-LLR calibration on labelled dev scores, or calibrate a model",
        description="Fit llr = scale * score + offset by prior-weighted logistic regression. On a labelled "
                    "score file it writes CAL.json for --calibration on `score` and `metrics`; with --model it "
                    "scores the dev trials T and writes a calibrated copy of the model (calibration, a "
                    "duration-aware one when the audio is given, and the dev score summary behind "
                    "`verify --far/--frr`).")
    parser.add_argument("scores", metavar="DEV_SCORES", nargs="?", help="labelled score file of a development set")
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="CAL.json for a score file; the calibrated model directory with --model")
    parser.add_argument("--prior", type=probability, default=0.5,
                        help="target prior at which the cross-entropy is minimised (default 0.5)")
    model = parser.add_argument_group("calibrating a model")
    model.add_argument("--model", metavar="M", help="model artifact directory (left unchanged)")
    model.add_argument("--trials", metavar="T", help="labelled dev trial list (never the evaluation speakers); "
                       "default: generated over the labelled --data, written to OUT/calibration_trials.txt")
    model.add_argument("--data", metavar="DIR", help=f"the trials' audio: {DATA_HELP}")
    model.add_argument("--max-trials", type=int, default=None, metavar="N",
                       help="without --trials: at most N generated trials, up to half of them targets "
                            "(default 200000)")
    model.add_argument("--seed", type=int, default=0, help="without --trials: seed of the generated list (default 0)")
    model.add_argument("--embeddings", metavar="E", help="embedding store of the trial keys, made with M "
                       "(no durations: no duration-aware calibration)")
    model.add_argument("--device", default="cpu", help="device for embedding --data (default cpu)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from speakertrip.errors import ConfigError

    if args.model is not None:
        if args.trials is None and args.embeddings is not None:
            raise ConfigError("--embeddings needs --trials T: a trial list is generated only over a labelled "
                              "--data folder or manifest")
        if args.scores is not None or (args.trials is None and args.data is None):
            raise ConfigError("with --model give --data DIR (a trial list is generated over its speakers), or "
                              "--trials T with --data DIR or --embeddings E; not a score file")
        if args.max_trials is not None and (args.trials is not None or args.max_trials < 2):
            raise ConfigError("--max-trials N (N >= 2) sizes the generated list; it does not apply with --trials")
        return run_model(args)
    if args.scores is None or args.trials or args.data or args.embeddings:
        raise ConfigError("give a labelled score file (DEV_SCORES), or --model M --trials T --data DIR")
    return run_scores(args)


def run_scores(args: argparse.Namespace) -> int:
    from pathlib import Path

    from speakertrip.errors import ConfigError, FormatError
    from speakertrip.scoring import cllr, min_cllr, read_scores, train_calibration

    if Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a folder; a score calibration is one file: give CAL.json")
    scored = read_scores(args.scores)
    if scored.labels is None:
        raise FormatError("calibration needs labels (expected 'ENROLL TEST SCORE target|nontarget')", args.scores)
    calibration = train_calibration(scored.scores, scored.labels, args.prior, source=args.scores)
    calibration.save(args.out)
    llrs = calibration(scored.scores)
    print(f"scale   offset   Cllr (dev)  minCllr (dev)\n"
          f"{calibration.scale:<7.4g} {calibration.offset:<8.4g} {cllr(llrs, scored.labels):<11.4f} "
          f"{min_cllr(scored.scores, scored.labels):.4f}")
    print(f"wrote {args.out}")
    return 0


def run_model(args: argparse.Namespace) -> int:
    from speakertrip.evaluation.dev_scores import MAX_GENERATED_TRIALS
    from speakertrip.evaluation.recording import calibrate_model

    max_trials = MAX_GENERATED_TRIALS if args.max_trials is None else args.max_trials
    result = calibrate_model(args.model, args.trials, args.out, data=args.data, embeddings=args.embeddings,
                             prior=args.prior, device=args.device, progress=True, max_trials=max_trials,
                             seed=args.seed)
    calibration, metrics = result.calibration, result.metrics
    scores = calibration.scores
    quality = "yes" if calibration.quality is not None else "no (no durations)"
    if args.trials is None:
        print(f"dev trials      generated over {args.data}: {result.trials}")
    print(f"dev trials      {calibration.trials} ({scores.targets.count} targets, {scores.nontargets.count} non-targets)")
    confidence = calibration.confidence
    if confidence is None:
        print("dev speakers    unknown (keys are not SPEAKER/SESSION/UTT and no manifest): no intervals")
    else:
        print(f"dev speakers    {confidence.speakers} ({confidence.target_speakers} with targets, "
              f"{confidence.speaker_pairs} non-target speaker pairs)")
    print(f"calibration     llr = {calibration.linear.scale:.4g} * score {calibration.linear.offset:+.4g}; "
          f"duration-aware: {quality}")
    print(f"dev EER         {100 * metrics['eer']:.3f} % at threshold {metrics['eer_threshold']:.4f}")
    print(operating_points_table(calibration))
    doubts = [line for line in (calibration.doubt("far", far) for far in (0.01, 0.001)) if line]
    for line in doubts:
        print(f"warning: {line}")
    print(f"wrote {args.out}")
    return 0


def operating_points_table(calibration: DevCalibration) -> str:
    """The recorded operating points: threshold, dev errors and the speakers and pairs they come from, and the
    speaker-bootstrap intervals of the threshold and of the rate it realises on new speakers (``expected_interval``)."""
    from speakertrip.tables import format_table

    confidence = calibration.confidence
    if confidence is None:
        rows = [(f"far={far:g}", f"{calibration.scores.threshold_for_far(far):.4f}", "", "", "", "")
                for far in (0.01, 0.001) if far * calibration.scores.nontargets.count >= 1]
    else:
        rows = [(f"{p.kind}={p.rate:g}", f"{p.threshold:.4f}", f"{p.errors}",
                 f"{p.error_speakers}/{p.error_pairs}" if p.kind == "far" else f"{p.error_speakers}",
                 f"{p.threshold_interval[0]:.4f} .. {p.threshold_interval[1]:.4f}",
                 f"{100 * p.expected_interval[0]:.3g} .. {100 * p.expected_interval[1]:.3g} %" +
                 (" wide" if p.wide else ""))
                for p in confidence.points]
    level = "" if confidence is None else f" ({100 * confidence.confidence:g} %, speakers resampled)"
    return format_table(("operating point", "threshold", "dev errors", "speakers/pairs", f"threshold interval{level}",
                         "rate on new speakers"), rows, right=[1, 2])
