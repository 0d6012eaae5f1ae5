"""`speakertrip score`: cosine-score a trial list from an embedding store, optionally normalised
with a cohort and calibrated; write the scores and print the metrics of a labelled list."""

from __future__ import annotations

import argparse
import sys

from speakertrip.commands.metrics import add_metric_options, report


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score", help="score a trial list with cosine similarity (+ Z/T/S/AS-norm)",
        description="Cosine-score TRIALS (VoxCeleb '1 a b', Kaldi 'a b target', or unlabeled 'a b') with "
                    "the embeddings of a store (.npz or directory). Labelled lists get a metrics table.")
    parser.add_argument("--trials", required=True, help="trial list (format detected)")
    parser.add_argument("--embeddings", required=True, help="embedding store: EMB.npz or a directory")
    parser.add_argument("--out", metavar="SCORES.txt",
                        help="write 'ENROLL TEST SCORE [LABEL]' lines here (unlabeled lists without --out: stdout)")
    parser.add_argument("--enroll-map", metavar="MAP",
                        help="'ENROLL_ID KEY [KEY ...]' lines: trials may name an ENROLL_ID, scored with the mean "
                             "of its files' embeddings (CN-Celeb's multi-file enrolment, Kaldi's spk2utt)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="drop trials whose keys are not in the store (the count is printed)")
    norm = parser.add_argument_group("score normalisation")
    norm.add_argument("--norm", choices=("znorm", "tnorm", "snorm", "asnorm"), help="normalise with --cohort")
    norm.add_argument("--cohort", metavar="COHORT", help="cohort embedding store (.npz or directory)")
    norm.add_argument("--cohort-speaker-means", action="store_true",
                      help="use one mean embedding per speaker (first path component of the cohort keys)")
    norm.add_argument("--top-n", type=int, help="top cohort scores per side (default 300 for asnorm, all otherwise)")
    parser.add_argument("--device", default="cpu", help="torch device for scoring and cohort statistics")
    add_metric_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from speakertrip.errors import FormatError
    from speakertrip.scoring import format_scores, write_scores
    from speakertrip.scoring.trial_scoring import score_trial_list

    scored = score_trial_list(args.trials, args.embeddings, args.enroll_map, args.norm, args.cohort,
                              args.cohort_speaker_means, args.top_n, args.calibration, args.skip_missing, args.device)
    trials, scores = scored.trials, scored.scores
    if (args.det or args.bootstrap) and trials.labels is None:
        raise FormatError("--det and --bootstrap need a labelled trial list", args.trials)
    if scored.skipped:
        print(f"skipped {scored.skipped} of {scored.skipped + len(trials)} trials: keys not in {args.embeddings}",
              file=sys.stderr)
    if args.out:
        write_scores(args.out, trials.enroll, trials.test, scores, trials.labels)
    if trials.labels is None:
        if not args.out:
            sys.stdout.write(format_scores(trials.enroll, trials.test, scores))
        else:
            print(f"wrote {len(scores)} scores to {args.out}", file=sys.stderr)
        return 0
    name = args.norm or "cosine"
    report({name: (scores, trials.labels)}, args, llr=args.calibration is not None, sources={name: args.trials})
    return 0
