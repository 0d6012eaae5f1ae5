"""The Verifier from the shell: `speakertrip enroll | verify | identify | speakers`.

``verify`` exits 0 when the claim is accepted, 1 when rejected and 2 on any error, and prints
one line, so that scripts can branch on it. ``identify`` exits 0 when some speaker scores at
or above the threshold, 1 when nobody does. The operating point is ``--threshold``, ``--far`` or
``--frr`` (at most one; default the model's dev EER threshold); a calibrated model's LLR is
printed beside each score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _common(parser: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
        point = parser.add_mutually_exclusive_group()
        point.add_argument("--threshold", type=float, default=None,
                           help="accept scores >= this cosine (default: the model's dev EER threshold)")
        point.add_argument("--far", type=float, default=None, metavar="RATE",
                           help="accept at the threshold with this false-accept rate on the model's dev trials "
                                "(e.g. 0.01; needs a calibrated model)")
        point.add_argument("--frr", type=float, default=None, metavar="RATE",
                           help="accept at the threshold with this false-reject rate on the model's dev trials")
        parser.add_argument("--scoring", default=None, metavar="METHOD",
                            help="how a speaker's enrolment utterances meet a test: centroid, mean, max or top3 "
                                 "(default: the Verifier's, see the README's enrolment table)")
        parser.add_argument("--norm", choices=["asnorm"], default=None,
                            help="normalise scores with the store's cohort (needs --threshold)")
        parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    parser.add_argument("--store", required=True,
                        help="enrolment store: an SQLite file, or a postgresql://user@host/db URL (PostgreSQL + "
                             "pgvector; the password may come from PGPASSWORD or ~/.pgpass)")


def register(subparsers: argparse._SubParsersAction) -> None:
    enroll = subparsers.add_parser("enroll", help="enrol a speaker from audio files (or store a cohort)")
    _common(enroll)
    enroll.add_argument("--replace", action="store_true", help="drop the speaker's earlier utterances first")
    enroll.add_argument("--cohort", nargs="+", type=Path, default=None, metavar="FILE",
                        help="replace the score-normalisation cohort with these files")
    enroll.add_argument("entries", nargs="*", metavar="NAME FILE", help="speaker name, then one or more files")
    enroll.set_defaults(func=run_enroll)
    verify = subparsers.add_parser("verify", help="does FILE belong to NAME? exit 0 accepted, 1 rejected, 2 error")
    _common(verify)
    _adapt(verify)
    verify.add_argument("name", metavar="NAME")
    verify.add_argument("file", type=Path, metavar="FILE")
    verify.set_defaults(func=run_verify)
    identify = subparsers.add_parser("identify", help="who speaks in FILE? ranked enrolled speakers")
    _common(identify)
    _adapt(identify)
    identify.add_argument("file", type=Path, metavar="FILE")
    identify.add_argument("--top-k", type=int, default=5, help="candidates to show (default 5)")
    identify.add_argument("--all", action="store_true", help="also show candidates below the threshold")
    identify.set_defaults(func=run_identify)
    speakers = subparsers.add_parser("speakers", help="list the speakers of an enrolment store")
    _common(speakers, model=False)
    speakers.set_defaults(func=run_speakers)


def _adapt(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapt", action="store_true",
                        help="move the dev operating point into the domain of the store's speakers, without labels "
                             "(their scores against each other and the cohort are in-domain impostors)")


def _verifier(args: argparse.Namespace):
    from speakertrip.models import load_model
    from speakertrip.verification.verifier import Verifier

    return Verifier(load_model(args.model, device=args.device), store=args.store, threshold=args.threshold,
                    far=args.far, frr=args.frr, norm=args.norm, adapt=getattr(args, "adapt", False),
                    **({"scoring": args.scoring} if args.scoring else {}))


def _llr(value: float | None) -> str:
    return "" if value is None else f" llr={value:+.3f}"


def _operating_point(verifier) -> str:
    rates = verifier.dev_error_rates
    dev = "" if rates is None else f", dev FAR {100 * rates[0]:.3g} % FRR {100 * rates[1]:.3g} %"
    return f"threshold={verifier.threshold:.4f} ({verifier.operating_point}{dev})"


def run_enroll(args: argparse.Namespace) -> int:
    from speakertrip.errors import ConfigError

    if not args.entries and not args.cohort:
        raise ConfigError("give NAME FILE [FILE ...] (and/or --cohort FILE ...)")
    if len(args.entries) == 1:
        raise ConfigError(f"no audio files given for speaker {args.entries[0]!r}: enroll NAME FILE [FILE ...]")
    with _verifier(args) as verifier:
        if args.cohort:
            print(f"cohort: {verifier.enroll_cohort(args.cohort)} utterances in {verifier.store.location}")
        if args.entries:
            name, files = args.entries[0], [Path(f) for f in args.entries[1:]]
            count = verifier.enroll(name, files, replace=args.replace)
            print(f"{name}: {len(files)} utterance(s) added, {count} enrolled; "
                  f"{len(verifier.store)} speaker(s) in {verifier.store.location}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    try:
        with _verifier(args) as verifier:
            result = verifier.verify(args.name, args.file)
    except Exception as error:  # noqa: BLE001 - exit status 2 is part of this command's contract
        print(f"speakertrip verify: error: {error}", file=sys.stderr)
        return 2
    verdict = "accepted" if result.accepted else "rejected"
    print(f"{verdict} {result.name} {args.file} score={result.score:.4f}{_llr(result.llr)} "
          f"{_operating_point(verifier)}")
    return 0 if result.accepted else 1


def run_identify(args: argparse.Namespace) -> int:
    with _verifier(args) as verifier:
        matches = verifier.identify(args.file, top_k=args.top_k, open_set=not args.all)
        enrolled = len(verifier.store)
    if not matches:
        print(f"unknown: no enrolled speaker scores >= {_operating_point(verifier)} ({enrolled} enrolled)")
        return 1
    print(f"operating point: {_operating_point(verifier)}")
    print(f"{'rank':>4}  {'score':>8}  {'llr':>8}  {'':8}  name")
    for rank, match in enumerate(matches, 1):
        mark = "accepted" if match.score >= verifier.threshold else "below"
        llr = "-" if match.llr is None else f"{match.llr:+.3f}"
        print(f"{rank:>4}  {match.score:>8.4f}  {llr:>8}  {mark:8}  {match.name}")
    return 0 if matches[0].score >= verifier.threshold else 1


def run_speakers(args: argparse.Namespace) -> int:
    from speakertrip.verification.stores import open_store

    with open_store(args.store, create=False) as store:
        speakers = store.speakers()
        print(f"{store.location}: {len(speakers)} speaker(s), model {store.model_identity}, "
              f"{store.embedding_dim}-d, cohort of {len(store.cohort())}")
        width = max([len("name")] + [len(s.name) for s in speakers])
        print(f"{'name':<{width}}  {'utterances':>10}  updated")
        for speaker in speakers:
            print(f"{speaker.name:<{width}}  {speaker.num_utterances:>10}  {speaker.updated}")
    return 0
