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
    norm.add_argument("--top-k", type=int, help="top cohort scores per side (default 300 for asnorm, all otherwise)")
    parser.add_argument("--device", default="cpu", help="torch device for scoring and cohort statistics")
    add_metric_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from speakertrip.errors import ConfigError, FormatError
    from speakertrip.data.embedding_store import load_store
    from speakertrip.scoring import (
        Calibration,
        cosine_scores,
        find_missing,
        format_scores,
        load_cohort,
        normalize_trial_scores,
        read_trials,
        trial_embeddings,
        write_scores,
    )
    from speakertrip.scoring.enrolment import read_enrolment_map, with_enrolment_models

    if bool(args.norm) != bool(args.cohort):
        raise ConfigError("--norm and --cohort go together: a normalisation needs a cohort, and a cohort a --norm")
    trials = read_trials(args.trials)
    if trials.labels is None and (args.det or args.bootstrap):
        raise FormatError("--det and --bootstrap need a labelled trial list", args.trials)
    calibration = Calibration.load(args.calibration) if args.calibration else None
    store = load_store(args.embeddings)
    if args.enroll_map:
        store = with_enrolment_models(store, read_enrolment_map(args.enroll_map), args.enroll_map)
    cohort = load_cohort(args.cohort, args.cohort_speaker_means) if args.cohort else None
    if cohort is not None and cohort.dim != store.dim:
        raise FormatError(f"embeddings of different dimension: {store.dim} in {args.embeddings}, "
                          f"{cohort.dim} in the cohort {args.cohort}")
    if args.skip_missing:
        missing = find_missing(trials, store)
        if missing.any():
            print(f"skipped {int(missing.sum())} of {len(trials)} trials: keys not in {args.embeddings}",
                  file=sys.stderr)
            if missing.all():
                raise FormatError(f"none of the trials has both keys in {args.embeddings}", args.trials)
            trials = trials.subset(~missing)
    embedded = trial_embeddings(trials, store)
    scores = cosine_scores(embedded, args.device)
    if cohort is not None:
        scores = normalize_trial_scores(scores, embedded, cohort.embeddings, args.norm, args.top_k, args.device)
    if calibration is not None:
        scores = calibration(scores)
    if args.out:
        write_scores(args.out, trials.enroll, trials.test, scores, trials.labels)
    if trials.labels is None:
        if not args.out:
            sys.stdout.write(format_scores(trials.enroll, trials.test, scores))
        else:
            print(f"wrote {len(scores)} scores to {args.out}", file=sys.stderr)
        return 0
    name = args.norm or "cosine"
    report({name: (scores, trials.labels)}, args, llr=calibration is not None, sources={name: args.trials})
    return 0
