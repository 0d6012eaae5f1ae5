"""CN-Celeb preparation: training manifests (CN-Celeb1 dev, CN-Celeb2), the evaluation set, its trials.

CN-Celeb1 (OpenSLR 82) as released::

    data/<spk>/<genre>-<session>-<n>.flac   every utterance of the 1,000 speakers
    dev/dev.lst                             the 800 training speakers, one id a line
    eval/enroll/<spk>-enroll.flac           per evaluation speaker, its enrolment utterances concatenated
    eval/test/<spk>-<genre>-<session>-<n>.flac
    eval/lists/enroll.lst                   "<enroll_id> enroll/<file>"   (an id may have several lines)
    eval/lists/test.lst                     "test/<file>"
    eval/lists/trials.lst                   "<enroll_id> test/<file> <0|1>"
    eval/lists/enroll.map                   (if present) "<enroll_id> <spk>/<file> ..." the data/ utterances
                                            each enrolment was made from

CN-Celeb2 is training data only: ``data/<spk>/*.flac`` (all speakers, or those of ``spk.lst``).
A listed ``x.wav`` may stand for ``x.flac`` and the reverse (the v1 release was wav).

Enrolment: the trial list keeps CN-Celeb's enrolment ids, and an enrolment map gives each id its
files; ``speakertrip score --enroll-map`` scores an id with the mean of its files' unit-length
embeddings. Two maps are written: ``enroll_concat.map`` (the ``enroll.lst`` files: the released
concatenations, WeSpeaker's "CNC-Eval-Concat") and, when ``enroll.map`` exists,
``enroll_avg.map`` (the original utterances, averaged: WeSpeaker's "CNC-Eval-Avg").

Written under ``out``: ``train.jsonl`` (keys ``<spk>/<file>``), ``eval.jsonl`` (keys as the lists
write them, relative to ``eval/``; the utterances of ``enroll.map`` as ``data/<spk>/<file>``),
``trials/CNC-Eval.lst`` (VoxCeleb format: ``label enroll_id test_key``) and the maps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from speakertrip.data.manifest import build_utterances, write_manifest
from speakertrip.data.prepared import write_dropped
from speakertrip.errors import FormatError, SpeakertripError

AUDIO_SUFFIXES = (".flac", ".wav")
TRIALS_NAME = "CNC-Eval.lst"


def resolve_audio(folder: Path, relative: str, listed_in: Path, line_no: int | None = None) -> str:
    """``relative`` as found under ``folder`` (``.wav`` and ``.flac`` stand for each other); FormatError if absent."""
    name = Path(relative)
    for candidate in (name, *(name.with_suffix(suffix) for suffix in AUDIO_SUFFIXES if suffix != name.suffix)):
        if (folder / candidate).is_file():
            return candidate.as_posix()
    raise FormatError(f"{relative!r}: no such audio file under {folder}", listed_in, line_no)


def _lines(path: Path, usage: str, variable: bool = False) -> list[tuple[int, list[str]]]:
    """``(line_no, fields)`` of the non-empty lines of a list shaped as ``usage`` says (its word count;
    at least that many with ``variable``)."""
    if not path.is_file():
        raise FormatError("no such list (is this the CN-Celeb1 root?)", path)
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        expected = len(usage.split())
        if len(parts) != expected and not (variable and len(parts) >= expected):
            raise FormatError(f"expected {usage!r}", path, line_no, line)
        rows.append((line_no, parts))
    if not rows:
        raise FormatError("the list is empty", path)
    return rows


def speaker_files(data: Path, speakers: Sequence[str] | None, listed_in: Path | None) -> list[tuple[str, str, Path]]:
    """``(utt_id, spk_id, path)`` of the audio under ``data/<spk>/`` for ``speakers`` (None: every folder)."""
    if speakers is None:
        speakers = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
    entries = []
    for speaker in speakers:
        folder = data / speaker
        if not folder.is_dir():
            raise FormatError(f"speaker {speaker!r} has no folder {folder}", listed_in)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        entries += [(f"{speaker}/{p.name}", speaker, p.resolve()) for p in files]
    if not entries:
        raise SpeakertripError(f"{data}: no audio (<spk>/*.flac or *.wav) found")
    return entries


def _training_entries(cnceleb1: Path, cnceleb2: Path | None) -> list[tuple[str, str, Path]]:
    dev_list = cnceleb1 / "dev" / "dev.lst"
    speakers = [parts[0] for _, parts in _lines(dev_list, "SPEAKER_ID")]
    entries = speaker_files(cnceleb1 / "data", speakers, dev_list)
    if cnceleb2 is not None:
        if not cnceleb2.is_dir():
            raise SpeakertripError(f"{cnceleb2}: no such corpus folder (CN-Celeb2)")
        listed = cnceleb2 / "spk.lst"
        extra = [parts[0] for _, parts in _lines(listed, "SPEAKER_ID")] if listed.is_file() else None
        more = speaker_files(cnceleb2 / "data", extra, listed if extra else None)
        shared = sorted({spk for _, spk, _ in more} & set(speakers))
        if shared:
            raise SpeakertripError(f"{cnceleb2}: speaker {shared[0]} is in both CN-Celeb1 dev and CN-Celeb2 "
                                   f"({len(shared)} shared ids): check the two roots")
        entries += more
    return entries


def _evaluation(cnceleb1: Path) -> tuple[list[tuple[str, str, Path]], list[tuple[int, str, str]], dict[str, dict]]:
    """Evaluation entries, trials ``(label, enroll_id, test_key)`` and the enrolment maps."""
    eval_dir, lists = cnceleb1 / "eval", cnceleb1 / "eval" / "lists"
    keys: dict[str, str] = {}  # eval key -> speaker

    def eval_key(relative: str, listed_in: Path, line_no: int, speaker: str) -> str:
        key = resolve_audio(eval_dir, relative, listed_in, line_no)
        keys[key] = speaker
        return key

    concat: dict[str, list[str]] = {}
    for line_no, (enroll_id, relative) in _lines(lists / "enroll.lst", "ENROLL_ID enroll/FILE"):
        speaker = enroll_id.split("-")[0]
        concat.setdefault(enroll_id, []).append(eval_key(relative, lists / "enroll.lst", line_no, speaker))
    test_list = lists / "test.lst"
    if test_list.is_file():
        for line_no, (relative,) in _lines(test_list, "test/FILE"):
            eval_key(relative, test_list, line_no, Path(relative).name.split("-")[0])
    trials = []
    trial_list = lists / "trials.lst"
    for line_no, (enroll_id, relative, label) in _lines(trial_list, "ENROLL_ID test/FILE 0|1"):
        if label not in ("0", "1"):
            raise FormatError(f"the label must be 0 or 1, got {label!r}", trial_list, line_no)
        if enroll_id not in concat:
            raise FormatError(f"enrolment id {enroll_id!r} is not in {lists / 'enroll.lst'}", trial_list, line_no)
        trials.append((int(label), enroll_id, eval_key(relative, trial_list, line_no,
                                                       Path(relative).name.split("-")[0])))
    maps: dict[str, dict] = {"concat": concat}
    original = lists / "enroll.map"
    if original.is_file():
        maps["avg"] = {}
        for line_no, (enroll_id, *files) in _lines(original, "ENROLL_ID SPK/FILE...", variable=True):
            if enroll_id not in concat:
                raise FormatError(f"enrolment id {enroll_id!r} is not in {lists / 'enroll.lst'}", original, line_no)
            found = [resolve_audio(cnceleb1 / "data", name, original, line_no) for name in files]
            maps["avg"].setdefault(enroll_id, []).extend(f"data/{name}" for name in found)
            keys.update({f"data/{name}": name.split("/")[0] for name in found})
    entries = [(key, speaker, (eval_dir / key if not key.startswith("data/") else cnceleb1 / key).resolve())
               for key, speaker in keys.items()]
    return entries, trials, maps


def prepare_cnceleb(root: str | Path, out: str | Path, cnceleb2: str | Path | None = None, workers: int = 8,
                    skip_bad: bool = False, deep: bool = False, progress: bool = True) -> dict[str, Path]:
    """Write the manifests, ``trials/CNC-Eval.lst`` and the enrolment maps; returns the paths by name.

    Names: ``"train"``, ``"eval"``, ``"trials"``, ``"enroll_concat"`` and, with ``eval/lists/enroll.map``,
    ``"enroll_avg"``. Re-running rewrites the same files. With ``skip_bad``, unreadable training
    files are dropped; evaluation files never are (a trial would silently disappear).

    >>> import tempfile
    >>> from speakertrip.testing import make_cnceleb2_tree, make_cnceleb_tree
    >>> folder = Path(tempfile.mkdtemp())
    >>> cnceleb1 = make_cnceleb_tree(folder / "CN-Celeb_flac", num_speakers=3, eval_speakers=1, duration=(0.5, 0.5))
    >>> cnceleb2 = make_cnceleb2_tree(folder / "CN-Celeb2_flac", num_speakers=1, utterances=2, duration=(0.5, 0.5))
    >>> paths = prepare_cnceleb(cnceleb1, folder / "data", cnceleb2=cnceleb2, workers=1, progress=False)
    >>> sorted(paths)
    ['enroll_avg', 'enroll_concat', 'eval', 'train', 'trials']
    """
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise SpeakertripError(f"{root}: no such corpus folder (CN-Celeb1)")
    training = _training_entries(root, Path(cnceleb2) if cnceleb2 is not None else None)
    evaluation, trials, maps = _evaluation(root)
    train, dropped = build_utterances(training, skip_bad=skip_bad, workers=workers, deep=deep, progress=progress)
    tested, _ = build_utterances(evaluation, workers=workers, deep=deep, progress=progress)
    paths = {"train": write_manifest(train, out / "train.jsonl"), "eval": write_manifest(tested, out / "eval.jsonl")}
    paths["trials"] = out / "trials" / TRIALS_NAME
    paths["trials"].parent.mkdir(parents=True, exist_ok=True)
    paths["trials"].write_text("".join(f"{label} {enroll} {test}\n" for label, enroll, test in trials))
    for name, enrolments in maps.items():
        paths[f"enroll_{name}"] = out / f"enroll_{name}.map"
        paths[f"enroll_{name}"].write_text("".join(f"{enroll_id} {' '.join(files)}\n"
                                                   for enroll_id, files in enrolments.items()))
    if dropped:
        paths["dropped"] = write_dropped(dropped, out)
    return paths
