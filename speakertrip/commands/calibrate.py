"""`speakertrip calibrate DEV_SCORES --out cal.json`: train a linear score-to-LLR calibration."""

from __future__ import annotations

import argparse

from speakertrip.commands.metrics import probability


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="train a score-to-LLR calibration on a labelled dev score file",
        description="Fit llr = scale * score + offset by prior-weighted logistic regression on a labelled "
                    "score file; use it with --calibration on `score` and `metrics`.")
    parser.add_argument("scores", metavar="DEV_SCORES", help="labelled score file of a development set")
    parser.add_argument("--out", required=True, metavar="CAL.json", help="where to write the calibration")
    parser.add_argument("--prior", type=probability, default=0.5,
                        help="target prior at which the cross-entropy is minimised (default 0.5)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
