"""`speakertrip calibrate`: train a score-to-LLR calibration.

Two forms:

- ``speakertrip calibrate DEV_SCORES --out cal.json``: on a labelled score file, for ``score``/``metrics``;
- ``speakertrip calibrate --model M --trials T (--data DIR | --embeddings E) --out M2``: a calibrated
  copy of a model artifact (LLRs and operating points for the Verifier); ``M`` is left unchanged.
"""

from __future__ import annotations

import argparse

from speakertrip.commands.metrics import probability


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
    model.add_argument("--trials", metavar="T", help="labelled dev trial list (never the evaluation speakers)")
    model.add_argument("--data", metavar="DIR", help="audio folder (keys: relative paths) or manifest of the trials")
    model.add_argument("--embeddings", metavar="E", help="embedding store of the trial keys, made with M "
                       "(no durations: no duration-aware calibration)")
    model.add_argument("--device", default="cpu", help="device for embedding --data (default cpu)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from speakertrip.errors import ConfigError

    if args.model is not None:
        if args.scores is not None or args.trials is None:
            raise ConfigError("with --model give --trials T and --data DIR or --embeddings E, not a score file")
        return run_model(args)
    if args.scores is None or args.trials or args.data or args.embeddings:
        raise ConfigError("give a labelled score file (DEV_SCORES), or --model M --trials T --data DIR")
    return run_scores(args)


def run_scores(args: argparse.Namespace) -> int:
    from speakertrip.errors import FormatError
    from speakertrip.scoring import cllr, min_cllr, read_scores, train_calibration

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
    from speakertrip.evaluation.recording import calibrate_model

    result = calibrate_model(args.model, args.trials, args.out, data=args.data, embeddings=args.embeddings,
                             prior=args.prior, device=args.device, progress=True)
    calibration, metrics = result.calibration, result.metrics
    scores = calibration.scores
    quality = "yes" if calibration.quality is not None else "no (no durations)"
    print(f"dev trials      {calibration.trials} ({scores.targets.count} targets, {scores.nontargets.count} non-targets)")
    print(f"calibration     llr = {calibration.linear.scale:.4g} * score {calibration.linear.offset:+.4g}; "
          f"duration-aware: {quality}")
    print(f"dev EER         {100 * metrics['eer']:.3f} % at threshold {metrics['eer_threshold']:.4f}")
    print(f"{'FAR target':<15} {'threshold':>9}  dev FRR")
    for far in (0.01, 0.001):
        if far * scores.nontargets.count >= 1:
            threshold = scores.threshold_for_far(far)
            print(f"{far:<15g} {threshold:>9.4f}  {100 * scores.frr(threshold):.2f} %")
    print(f"wrote {args.out}")
    return 0
