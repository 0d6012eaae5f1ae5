"""Speaker hold-out and generated trial lists (speakertrip.data.split), checked against brute-force enumerations."""

from __future__ import annotations

from itertools import combinations

import pytest

from speakertrip.data.manifest import Utterance
from speakertrip.data.split import choose_speakers, hold_out_speakers, make_trials, split_by_speakers
from speakertrip.errors import ConfigError

LAYOUT = {"id1": [2, 1], "id2": [3], "id3": [1, 2, 1], "id4": [3, 2]}  # speaker → utterances per session


def utterances(layout: dict[str, list[int]]) -> list[Utterance]:
    return [Utterance(f"{speaker}/s{session}/{n:05d}.wav", speaker, "unused.wav", 1.0, 16000, 16000)
            for speaker, sessions in layout.items() for session, count in enumerate(sessions) for n in range(count)]


def brute_force(utts: list[Utterance], cross_session: bool) -> tuple[set, set]:
    """Every target pair (across sessions where asked, all pairs of a one-session speaker) and every
    non-target pair, as (earlier key, later key)."""
    folder = {u.utt_id: u.utt_id.rpartition("/")[0] for u in utts}
    speaker = {u.utt_id: u.spk_id for u in utts}
    sessions = {s: {folder[k] for k in folder if speaker[k] == s} for s in set(speaker.values())}
    targets, nontargets = set(), set()
    for a, b in combinations(sorted(folder), 2):
        if speaker[a] != speaker[b]:
            nontargets.add((a, b))
        elif not cross_session or len(sessions[speaker[a]]) == 1 or folder[a] != folder[b]:
            targets.add((a, b))
    return targets, nontargets


def split(trials: list[tuple[int, str, str]]) -> tuple[list, list]:
    return [(e, t) for label, e, t in trials if label == 1], [(e, t) for label, e, t in trials if label == 0]


def assert_distinct(trials: list[tuple[int, str, str]]) -> None:
    pairs = [frozenset((enrol, test)) for _, enrol, test in trials]
    assert len(set(pairs)) == len(pairs) and all(len(pair) == 2 for pair in pairs)


@pytest.mark.parametrize("cross_session", [False, True])
def test_without_a_limit_every_pair_once(cross_session):
    utts = utterances(LAYOUT)
    targets, nontargets = split(make_trials(utts, max_trials=None, cross_session=cross_session))
    expected_targets, expected_nontargets = brute_force(utts, cross_session)
    assert sorted(targets) == sorted(expected_targets) and sorted(nontargets) == sorted(expected_nontargets)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_cross_session_trials_never_repeat_a_pair(seed):
    utts = utterances(LAYOUT)
    trials = make_trials(utts, max_trials=None, seed=seed, balanced=True, cross_session=True)
    assert_distinct(trials)
    targets, nontargets = split(trials)
    expected_targets, expected_nontargets = brute_force(utts, cross_session=True)
    assert sorted(targets) == sorted(expected_targets) and len(nontargets) == len(targets)
    assert set(nontargets) <= expected_nontargets
    assert trials == make_trials(utts, max_trials=None, seed=seed, balanced=True, cross_session=True)


def test_a_one_session_speaker_gives_its_pairs_within_the_session():
    keys = {"id1/a/00001.wav": "id1", "id1/a/00002.wav": "id1", "id1/b/00001.wav": "id1",
            "id2/c/00001.wav": "id2", "id2/c/00002.wav": "id2"}
    targets, nontargets = split(make_trials(keys, max_trials=None, balanced=True, cross_session=True))
    assert set(targets) == {("id1/a/00001.wav", "id1/b/00001.wav"), ("id1/a/00002.wav", "id1/b/00001.wav"),
                            ("id2/c/00001.wav", "id2/c/00002.wav")}
    assert len(nontargets) == 3 and all(a.split("/")[0] != b.split("/")[0] for a, b in nontargets)


def test_many_speakers_balanced_lists_hold_no_repeated_trial():
    """The synthetic corpus's old generator drew each non-target's test side independently, so the demo's
    lists repeated trials; drawn as distinct pairs, none repeats and the counts stay balanced."""
    utts = utterances({f"id{10000 + s}": [4, 4, 4, 4] for s in range(60)})
    trials = make_trials(utts, max_trials=None, seed=3, balanced=True, cross_session=True)
    assert_distinct(trials)
    targets, nontargets = split(trials)
    assert len(targets) == 60 * 96 == len(nontargets)  # 16 utterances in 4 sessions: 120 pairs - 4 x 6 within


def test_a_limit_keeps_at_most_half_targets_and_fills_with_nontargets():
    utts = utterances(LAYOUT)
    trials = make_trials(utts, max_trials=10, seed=0)
    assert_distinct(trials)
    targets, nontargets = split(trials)
    assert len(trials) == 10 and len(targets) == 5
    expected_targets, expected_nontargets = brute_force(utts, cross_session=False)
    assert set(targets) <= expected_targets and set(nontargets) <= expected_nontargets
    assert make_trials(utts, max_trials=10, seed=1) != trials
    assert make_trials({u.utt_id: u.spk_id for u in utts}, max_trials=10, seed=0) == trials


def test_a_trial_list_needs_two_speakers_and_a_pair():
    with pytest.raises(ConfigError, match="needs at least 2 speakers and a speaker with two utterances"):
        make_trials(utterances({"id1": [3]}))
    with pytest.raises(ConfigError, match="got 2 speaker"):
        make_trials(utterances({"id1": [1], "id2": [1]}))


def test_hold_out_speakers_last_by_id_or_at_random():
    utts = utterances({f"id{s}": [2] for s in range(1, 8)})
    rest, held = hold_out_speakers(utts, 3, seed=None)
    assert {u.spk_id for u in held} == {"id5", "id6", "id7"} and len(rest) + len(held) == len(utts)
    assert split_by_speakers(utts, {"id5", "id6", "id7"}) == (rest, held)
    _, drawn = hold_out_speakers(utts, 3, seed=4)
    assert {u.spk_id for u in drawn} == choose_speakers([u.spk_id for u in utts], 3, seed=4)
    assert hold_out_speakers(utts, 3, seed=4) == hold_out_speakers(utts, 3, seed=4)
    assert len({u.spk_id for u in hold_out_speakers(utts, 0.1, seed=0)[1]}) == 2  # a fraction: at least two
    assert choose_speakers(["b", "a", "c", "a"], 5, seed=None) == {"a", "b", "c"}


@pytest.mark.parametrize("count", [1, 6, 7])
def test_hold_out_speakers_keeps_two_on_each_side(count):
    utts = utterances({f"id{s}": [2] for s in range(1, 8)})
    with pytest.raises(ConfigError, match=rf"--test-speakers {count}: cannot hold out {count} of 7 speakers;.* "
                                          r"2 \.\. 5 can be held out"):
        hold_out_speakers(utts, count, seed=None, option="--test-speakers")
