"""`speakertrip metrics SCORES [SCORES ...]`: EER, minDCF and more from labelled score files.

Also home of the options and the report shared with `speakertrip score`.
"""

from __future__ import annotations

import argparse
import json
import sys


def probability(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_metric_options(parser: argparse.ArgumentParser) -> None:
    """Options of the metrics report: priors, costs, LLR metrics, bootstrap, DET plot, JSON."""
    group = parser.add_argument_group("metrics")
    group.add_argument("--p-target", type=probability, nargs="+", default=[0.01, 0.05], metavar="P",
                       help="target priors of the DCFs (default: 0.01 0.05)")
    group.add_argument("--c-miss", type=positive, default=1.0, help="cost of a miss (default 1)")
    group.add_argument("--c-fa", type=positive, default=1.0, help="cost of a false alarm (default 1)")
    group.add_argument("--calibration", metavar="CAL.json",
                       help="map scores to log-likelihood ratios with a calibration from `speakertrip calibrate`")
    group.add_argument("--threshold", type=float, help="also report actDCF of the decisions score >= THRESHOLD")
    group.add_argument("--bootstrap", type=int, default=0, metavar="N",
                       help="confidence intervals of EER and minDCF from N bootstrap replicates")
    group.add_argument("--confidence", type=probability, default=0.95, help="interval coverage (default 0.95)")
    group.add_argument("--det", metavar="DET.png", help="write the DET curve to this PNG")
    group.add_argument("--json", action="store_true", help="print one JSON object (rates as fractions)")


def report(systems: dict, args: argparse.Namespace, llr: bool, sources: dict | None = None) -> None:
    """Compute and print the metrics of ``{name: (scores, labels)}``; write the DET plot if asked.

    ``sources`` maps a name to the file named in errors (default: the name itself).
    """
    from speakertrip.scoring import compute_metrics, metrics_table, plot_det

    results = {name: compute_metrics(scores, labels, args.p_target, args.c_miss, args.c_fa, llr=llr,
                                     threshold=args.threshold, bootstrap=args.bootstrap,
                                     confidence=args.confidence,
                                     source=(sources or {}).get(name, name))
               for name, (scores, labels) in systems.items()}
    if args.det:
        plot_det(systems, args.det, p_target=args.p_target[0], c_miss=args.c_miss, c_fa=args.c_fa)
    if args.json:
        objects = {name: metrics.to_dict() for name, metrics in results.items()}
        print(json.dumps(next(iter(objects.values())) if len(objects) == 1 else objects, indent=2))
    else:
        print(metrics_table(results if len(results) > 1 else {"": next(iter(results.values()))}))
        if args.det:
            print(f"DET curve: {args.det}", file=sys.stderr)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "metrics", help="metrics of labelled score files (EER, minDCF, Cllr, DET)",
        description="Metrics of score files 'ENROLL TEST SCORE LABEL' (LABEL target/nontarget or 1/0). "
                    "Several files are reported one row each and drawn on one DET plot.")
    parser.add_argument("scores", nargs="+", metavar="SCORES", help="score files with labels")
    parser.add_argument("--llr", action="store_true",
                        help="the scores are calibrated log-likelihood ratios: add Cllr and actDCF")
    add_metric_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from speakertrip.errors import FormatError
    from speakertrip.scoring import Calibration, read_scores

    calibration = Calibration.load(args.calibration) if args.calibration else None
    systems = {}
    for path in args.scores:
        scored = read_scores(path)
        if scored.labels is None:
            raise FormatError("the score file has no labels (expected 'ENROLL TEST SCORE target|nontarget')", path)
        systems[path] = (calibration(scored.scores) if calibration else scored.scores, scored.labels)
    report(systems, args, llr=args.llr or calibration is not None)
    return 0
