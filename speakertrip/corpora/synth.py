"""An offline speaker corpus in the VoxCeleb layout, spoken by eSpeak NG voices through recording channels.

A speaker is a reproducible voice: an eSpeak language and voice variant, a base pitch, pitch
range, speaking rate, word gap and vocal-tract scale (a resampling factor that moves formants
and pitch together). Each utterance is a new pseudo-word sentence with small pitch and rate
changes; each session (``<spk>/<session>/``) has its own channel: a short exponentially decaying
room response, a band-pass, coloured noise at some SNR and a level. The last
``num_test_speakers`` speakers are held out, speak other languages and may use voice variants
that no training speaker uses; ``veri_test2.txt`` holds balanced trials over them only.

Every speaker is generated in a fresh worker process (eSpeak keeps state between calls), with
random generators seeded by (seed, speaker, session, utterance), so files are byte-identical
for a seed whatever the number of workers.

>>> from speakertrip.corpora.synth import generate_corpus
>>> import tempfile
>>> root = generate_corpus(Path(tempfile.mkdtemp()) / "synth", num_speakers=2, num_test_speakers=2,
...                        utterances_per_speaker=2, sessions_per_speaker=1, workers=1, progress=False)
>>> sorted((root / "wav").iterdir())[0].name
'id20001'
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import shutil
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speakertrip.audio.trim import trim_silence
from speakertrip.corpora.espeak import engine
from speakertrip.data.split import make_trials, write_trials
from speakertrip.errors import ConfigError

SAMPLE_RATE = 16000
FORMAT_VERSION = 2  # 2: veri_test2.txt without repeated trials (data.split.make_trials)
TRAIN_LANGUAGES = ("en", "en-us", "en-gb-scotland", "de", "nl", "sv", "da", "fr", "es", "es-419", "it", "pt",
                   "pt-br", "ca", "ro", "pl", "cs", "sk", "hr", "sl", "fi", "et", "hu", "lv", "lt", "eu", "tr", "id")
HELD_OUT_LANGUAGES = ("af", "nb", "is", "cy", "ga", "eo", "ia", "la", "sq", "mt", "sw", "ms", "vi")
# Natural-sounding eSpeak variants by gender; the held-out ones are used by test speakers only.
VARIANTS = {
    "male": ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "Andy", "Denis", "Diogo", "Gene", "Hugo", "Jacky", "Lee",
             "Marco", "Mario", "Michael", "Mike", "antonio", "david", "ed", "gustave", "ian", "iven", "john",
             "marcelo", "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "robert", "travis",
             "adam", "benjamin", "caleb", "edward", "klatt", "klatt2", "boris", "max", "Alex"),
    "female": ("f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda", "linda",
               "steph", "steph3"),
}
HELD_OUT_VARIANTS = {"male": ("m8", "grandpa", "victor", "Henrique", "sandro", "klatt3", "iven2"),
                     "female": ("steph2", "grandma", "shelby")}
_ONSETS, _VOWELS, _CODAS = tuple("bdfgklmnprstv"), tuple("aeiou"), ("", "", "", "n", "r", "s", "l")
_SECONDS_PER_WORD_AT_175 = 0.35  # measured over all the languages above
_ID_ALPHABET = np.array(list(string.ascii_letters + string.digits + "-_"))


@dataclass(frozen=True)
class SpeakerVoice:
    """How one speaker sounds; eSpeak units (pitch and range 0–99, rate in words/min, word gap ×10 ms)."""

    speaker: str
    language: str
    variant: str
    gender: str
    pitch: int
    pitch_range: int
    rate: int
    word_gap: int
    tract: float  # > 1 raises formants and pitch and speeds up, as a shorter vocal tract would


@dataclass(frozen=True)
class Channel:
    """One session's recording channel."""

    session: str
    level_db: float  # peak level, dBFS
    snr_db: float
    noise_colour: float  # spectral slope of the noise power: 0 white, 1 pink, 2 brown
    rt60: float  # seconds
    reverb_db: float  # reverberant energy relative to the direct sound
    low_hz: float
    high_hz: float


def speaker_voices(num_speakers: int, num_test_speakers: int, seed: int = 0) -> list[SpeakerVoice]:
    """The voices of speakers ``id20001``...; the last ``num_test_speakers`` use held-out languages."""
    voices = []
    for index in range(num_speakers):
        rng = np.random.default_rng([seed, index, 0])
        held_out = index >= num_speakers - num_test_speakers
        gender = ("male", "female")[int(rng.integers(2))]
        variants = VARIANTS[gender] + (HELD_OUT_VARIANTS[gender] if held_out else ())
        languages = HELD_OUT_LANGUAGES if held_out else TRAIN_LANGUAGES
        voices.append(SpeakerVoice(
            speaker=f"id{20001 + index}", language=str(rng.choice(languages)), variant=str(rng.choice(variants)),
            gender=gender, pitch=int(rng.integers(15, 86)), pitch_range=int(rng.integers(15, 86)),
            rate=int(rng.integers(130, 211)), word_gap=int(rng.integers(0, 3)),
            tract=round(float(rng.uniform(0.88, 1.12)), 3)))
    return voices


def session_channels(speaker_index: int, sessions: int, seed: int = 0) -> list[Channel]:
    """The channels of one speaker's sessions, with YouTube-like 11-character session ids."""
    rng = np.random.default_rng([seed, speaker_index, 1])
    return [Channel(session="".join(rng.choice(_ID_ALPHABET, 11)), level_db=float(rng.uniform(-18, -3)),
                    snr_db=float(rng.uniform(8, 30)), noise_colour=float(rng.uniform(0, 2)),
                    rt60=float(rng.uniform(0.1, 0.5)), reverb_db=float(rng.uniform(-18, -6)),
                    low_hz=float(rng.uniform(60, 300)), high_hz=float(rng.uniform(3400, 7600)))
            for _ in range(sessions)]


def random_sentence(rng: np.random.Generator, words: int) -> str:
    """A sentence of ``words`` pronounceable pseudo-words (1–3 syllables), with commas now and then."""
    tokens = []
    for position in range(words):
        syllables = int(rng.integers(1, 4))
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
        tokens.append(word + ("," if position < words - 1 and rng.random() < 0.15 else ""))
    return " ".join(tokens) + "."


def room_response(channel: Channel, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A direct impulse plus exponentially decaying noise (−60 dB at ``rt60``); float64 (L,)."""
    t = np.arange(int(channel.rt60 * sample_rate)) / sample_rate
    tail = rng.standard_normal(len(t)) * 10 ** (-3 * t / channel.rt60)
    tail[0] = 0.0
    tail *= np.sqrt(10 ** (channel.reverb_db / 10) / max(float(np.sum(tail**2)), 1e-12))
    tail[0] = 1.0
    return tail


@functools.lru_cache(maxsize=64)
def _band_pass(low_hz: float, high_hz: float, sample_rate: int) -> np.ndarray:
    from scipy import signal

    return signal.butter(2, [low_hz, high_hz], btype="bandpass", fs=sample_rate, output="sos")


def apply_channel(speech: np.ndarray, channel: Channel, response: np.ndarray, rng: np.random.Generator,
                  sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Reverberate, band-pass, add coloured noise and set the level of ``speech`` (T,); float64 (T,)."""
    from scipy import fft, signal  # imported where audio is made: `speakertrip --help` need not pay for it

    wet = signal.fftconvolve(speech, response)[: len(speech)]
    wet = signal.sosfilt(_band_pass(channel.low_hz, channel.high_hz, sample_rate), wet)
    size = fft.next_fast_len(len(wet), real=True)
    spectrum = fft.rfft(rng.standard_normal(size))
    spectrum *= np.maximum(fft.rfftfreq(size, 1 / sample_rate), 20.0) ** (-channel.noise_colour / 2)
    noise = fft.irfft(spectrum, n=size)[: len(wet)]
    snr_db = channel.snr_db + rng.uniform(-2, 2)
    noisy = wet + noise * np.sqrt(np.mean(wet**2) / max(np.mean(noise**2), 1e-20) * 10 ** (-snr_db / 10))
    level_db = channel.level_db + rng.uniform(-1, 1)
    return noisy * (10 ** (level_db / 20) / max(np.abs(noisy).max(), 1e-9))


def _speak(voice: SpeakerVoice, rng: np.random.Generator, duration: tuple[float, float]) -> np.ndarray:
    """One utterance of ``voice`` at 16 kHz, trimmed and at most ``duration[1]`` s; float64 (T,)."""
    from scipy import signal

    tts = engine()
    rate = int(np.clip(round(voice.rate * rng.uniform(0.94, 1.06)), 80, 450))
    target = rng.uniform(*duration)
    words = max(2, round(target * voice.tract * rate / 175 / _SECONDS_PER_WORD_AT_175))
    samples = tts.synthesize(random_sentence(rng, words), voice.language, voice.variant, rate=rate,
                             pitch=int(np.clip(voice.pitch + rng.integers(-4, 5), 0, 99)),
                             pitch_range=int(np.clip(voice.pitch_range + rng.integers(-6, 7), 0, 99)),
                             word_gap=voice.word_gap, seed=int(rng.integers(1 << 31)))
    source_rate = int(round(tts.sample_rate * voice.tract / 50)) * 50  # play faster or slower: formants move
    common = np.gcd(source_rate, SAMPLE_RATE)
    speech = signal.resample_poly(samples / 32768.0, SAMPLE_RATE // common, source_rate // common)
    speech = trim_silence(speech, SAMPLE_RATE, frame_seconds=0.01, pad_seconds=0.1, centered=False)
    longest = int(duration[1] * SAMPLE_RATE)
    if len(speech) > longest:
        speech = speech[:longest] * np.minimum(1.0, np.arange(longest, 0, -1) / (0.02 * SAMPLE_RATE))
    return speech


_SpeakerTask = tuple[Path, SpeakerVoice, int, int, int, int, tuple[float, float]]


def _generate_speaker(task: _SpeakerTask) -> list[tuple[str, float]]:
    """Write one speaker's files (in a fresh process); returns (key, seconds) per utterance.

    ``task`` is (root, voice, speaker index, utterances, sessions, seed, duration range).
    """
    root, voice, index, utterances, sessions, seed, duration = task
    channels = session_channels(index, sessions, seed)
    responses = [room_response(c, np.random.default_rng([seed, index, 2, s])) for s, c in enumerate(channels)]
    written = []
    for utterance in range(utterances):
        session, number = utterance % sessions, utterance // sessions + 1
        rng = np.random.default_rng([seed, index, 3, utterance])
        audio = apply_channel(_speak(voice, rng, duration), channels[session], responses[session], rng)
        key = f"{voice.speaker}/{channels[session].session}/{number:05d}.wav"
        (root / "wav" / key).parent.mkdir(parents=True, exist_ok=True)
        pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
        sf.write(root / "wav" / key, pcm, SAMPLE_RATE, subtype="PCM_16")
        written.append((key, len(pcm) / SAMPLE_RATE))
    return written


def generate_corpus(out: str | Path, num_speakers: int = 50, num_test_speakers: int = 10,
                    utterances_per_speaker: int = 16, sessions_per_speaker: int = 4, seed: int = 0,
                    workers: int | None = None, duration: tuple[float, float] = (1.5, 3.0),
                    progress: bool = True) -> Path:
    """Write ``<out>/wav/idNNNNN/<session>/NNNNN.wav`` (16 kHz, 16-bit), ``veri_test2.txt`` and ``synth.json``.

    Does nothing when ``<out>/synth.json`` records the same parameters and every file is there;
    replaces a corpus it made with other parameters (or that lost files). ``workers`` processes
    (default: all cores) each generate whole speakers. Returns ``out``.
    """
    out = Path(out)
    parameters = {"num_speakers": num_speakers, "num_test_speakers": num_test_speakers,
                  "utterances_per_speaker": utterances_per_speaker, "sessions_per_speaker": sessions_per_speaker,
                  "seed": seed, "duration": list(duration), "format": FORMAT_VERSION}
    _check(parameters)
    done, partial = out / "synth.json", out / "synth.partial.json"
    if done.is_file() and json.loads(done.read_text()).get("parameters") == parameters and \
            sum(1 for _ in (out / "wav").rglob("*.wav")) == num_speakers * utterances_per_speaker:
        return out
    if (out / "wav").exists():
        if not (done.is_file() or partial.is_file()):
            raise ConfigError(f"{out}: holds a wav/ folder that is not a synthetic corpus; choose another --out")
        shutil.rmtree(out / "wav")  # ours, made with other parameters or interrupted
    done.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps({"parameters": parameters}))
    voices = speaker_voices(num_speakers, num_test_speakers, seed)
    tasks = [(out, voice, index, utterances_per_speaker, sessions_per_speaker, seed, tuple(duration))
             for index, voice in enumerate(voices)]
    keys_by_speaker, seconds = {}, 0.0
    for written in _run_tasks(tasks, workers, utterances_per_speaker, progress):
        keys_by_speaker[written[0][0].split("/")[0]] = [key for key, _ in written]
        seconds += sum(length for _, length in written)
    test_speakers = [voice.speaker for voice in voices[num_speakers - num_test_speakers:]]
    trials = make_trials({key: speaker for speaker in test_speakers for key in keys_by_speaker[speaker]},
                         max_trials=None, seed=seed, balanced=True, cross_session=True)
    write_trials(trials, out / "veri_test2.txt")
    summary = {"parameters": parameters, "sample_rate": SAMPLE_RATE, "hours": round(seconds / 3600, 4),
               "utterances": num_speakers * utterances_per_speaker, "trials": len(trials),
               "test_speakers": test_speakers, "speakers": [asdict(voice) for voice in voices]}
    done.write_text(json.dumps(summary, indent=1) + "\n")
    partial.unlink()
    return out


def _check(parameters: dict) -> None:
    speakers, test = parameters["num_speakers"], parameters["num_test_speakers"]
    utterances, sessions = parameters["utterances_per_speaker"], parameters["sessions_per_speaker"]
    low, high = parameters["duration"]
    if not 2 <= test <= speakers <= 79999:
        raise ConfigError(f"num_speakers={speakers}, num_test_speakers={test}: expected "
                          "2 <= num_test_speakers <= num_speakers <= 79999")
    if not 1 <= sessions <= utterances or utterances < 2:
        raise ConfigError(f"utterances_per_speaker={utterances}, sessions_per_speaker={sessions}: expected "
                          "at least 2 utterances and 1 to utterances_per_speaker sessions")
    if not 0.3 <= low <= high:
        raise ConfigError(f"duration=({low}, {high}): expected 0.3 <= shortest <= longest seconds")


def _run_tasks(tasks: list[_SpeakerTask], workers: int | None, utterances_per_speaker: int,
               progress: bool) -> list[list[tuple[str, float]]]:
    """Run one fresh process per speaker (eSpeak's state must start clean), ``workers`` at a time."""
    from tqdm import tqdm

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(tasks)))
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([__name__, "scipy.signal"])  # children fork from a server that imported them
    results = []
    bar = tqdm(total=len(tasks) * utterances_per_speaker, unit="utt", desc="synthesising", disable=not progress)
    with context.Pool(workers, maxtasksperchild=1) as pool, bar:
        for written in pool.imap_unordered(_generate_speaker, tasks):
            results.append(written)
            bar.update(len(written))
    return results


def prepare_synth(out: str | Path, num_speakers: int = 50, num_test_speakers: int = 10,
                  utterances_per_speaker: int = 16, sessions_per_speaker: int = 4, seed: int = 0,
                  workers: int | None = None, progress: bool = True) -> dict[str, Path]:
    """Generate the corpus into ``<out>/corpus`` (unless already there) and prepare it into ``<out>/data``.

    Preparation is VoxCeleb's (:func:`speakertrip.corpora.voxceleb.prepare_voxceleb`): its
    ``veri_test2.txt`` makes the held-out speakers ``test.jsonl``. Returns the paths written,
    ``"corpus"`` included.

    >>> import tempfile
    >>> paths = prepare_synth(tempfile.mkdtemp(), num_speakers=4, num_test_speakers=2, utterances_per_speaker=2,
    ...                       sessions_per_speaker=1, workers=1, progress=False)
    >>> sorted(paths)
    ['corpus', 'test', 'train', 'utts', 'veri_test2']
    """
    from speakertrip.corpora.voxceleb import prepare_voxceleb

    out = Path(out)
    corpus = generate_corpus(out / "corpus", num_speakers, num_test_speakers, utterances_per_speaker,
                             sessions_per_speaker, seed, workers, progress=progress)
    paths = prepare_voxceleb(corpus, out / "data", workers=workers or 8, progress=progress)
    return {"corpus": corpus, **paths}
