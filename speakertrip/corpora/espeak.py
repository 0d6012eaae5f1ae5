"""eSpeak NG through ctypes: synchronous synthesis of text into int16 samples, no subprocess.

The shared library and voice data come from the PyPI package ``espeakng-loader``; a system
``libespeak-ng`` (with its own data) is the fallback. The C library keeps global state, so
there is one engine per process (:func:`engine`); parallel synthesis uses a process pool.

>>> from speakertrip.corpora.espeak import engine
>>> tts = engine()
>>> samples = tts.synthesize("hello there", language="en", variant="f3", pitch=60)
>>> samples.dtype, tts.sample_rate
(dtype('int16'), 22050)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speakertrip.errors import ConfigError, SpeakertripError

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_BUFFER_MS = 200
_STATUS = {-1: "internal error", 1: "buffer full", 2: "not found"}
# espeak_PARAMETER values and the ranges eSpeak NG accepts for them.
_PARAMETERS = {"rate": (1, 80, 450), "volume": (2, 0, 200), "pitch": (3, 0, 99),
               "pitch_range": (4, 0, 99), "word_gap": (7, 0, 100)}

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(SpeakertripError, RuntimeError):
    """The eSpeak NG library or its data cannot be loaded or fails to synthesise."""


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


@dataclass(frozen=True)
class Voice:
    """A voice that eSpeak NG ships: ``identifier`` (``"gmw/de"``), display name and language codes."""

    identifier: str
    name: str
    languages: tuple[str, ...]


def find_library() -> tuple[Path, Path | None]:
    """The eSpeak NG shared library and data folder: from ``espeakng-loader``, else the system's.

    The data folder is ``None`` for a system library, which knows its own.
    """
    try:
        import espeakng_loader
        library, data = Path(espeakng_loader.get_library_path()), Path(espeakng_loader.get_data_path())
        if library.is_file():
            return library, data
    except (ImportError, RuntimeError):
        pass
    system = ctypes.util.find_library("espeak-ng")
    if system is None:
        raise EspeakError("eSpeak NG not found: install the PyPI package `espeakng-loader` "
                          "(pip install espeakng-loader) or the system package espeak-ng")
    return Path(system), None


class Espeak:
    """One eSpeak NG engine; use :func:`engine`, which makes one per process.

    Output depends on what the engine synthesised before in the same process (eSpeak keeps
    pitch-flutter, echo and filter state between calls): for byte-identical audio, synthesise
    the same sequence of calls in a fresh process with the same ``seed``.
    """

    def __init__(self, library: str | Path | None = None, data: str | Path | None = None):
        if library is None:
            library, data = find_library()
        if data is not None and not (Path(data) / "phontab").is_file():
            raise EspeakError(f"{data}: not an eSpeak NG data folder (no phontab file)")
        try:
            self._lib = ctypes.CDLL(str(library))
        except OSError as error:
            raise EspeakError(f"{library}: cannot load the eSpeak NG library: {error}") from None
        self._declare()
        data_arg = str(data).encode() if data is not None else None
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data_arg, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"{library}: eSpeak NG failed to initialise with data {data or '(built-in path)'}")
        self.sample_rate: int = rate
        data_path = ctypes.c_char_p()
        self._lib.espeak_Info(ctypes.byref(data_path))
        self.data_path = Path(data_path.value.decode()) if data_path.value else None
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive as long as the engine
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()
        self._libc_srand = _libc_srand()

    def _declare(self) -> None:
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]

    def _collect(self, samples, count: int, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # continue synthesis

    @functools.cached_property
    def voices(self) -> tuple[Voice, ...]:
        """The language voices of the data folder, as eSpeak lists them."""
        listed, voices, index = self._lib.espeak_ListVoices(None), [], 0
        while listed[index]:
            voice, languages = listed[index].contents, []
            address = voice.languages
            while address and ctypes.c_ubyte.from_address(address).value:  # (priority byte, name, NUL)*
                language = ctypes.string_at(address + 1)
                languages.append(language.decode())
                address += 2 + len(language)
            voices.append(Voice(voice.identifier.decode(), voice.name.decode(), tuple(languages)))
            index += 1
        return tuple(voices)

    @functools.cached_property
    def languages(self) -> frozenset[str]:
        """Every language code that :meth:`synthesize` accepts (``"en"``, ``"en-us"``, ``"de"``, ...)."""
        return frozenset(code for voice in self.voices for code in voice.languages)

    @functools.cached_property
    def variants(self) -> frozenset[str]:
        """Voice variants (``"m3"``, ``"f2"``, ``"klatt"``, ...): the files of ``voices/!v``."""
        folder = self.data_path / "voices" / "!v" if self.data_path else None
        return frozenset(p.name for p in folder.iterdir() if p.is_file()) if folder and folder.is_dir() else frozenset()

    def synthesize(self, text: str, language: str = "en", variant: str | None = None, rate: int = 175,
                   pitch: int = 50, pitch_range: int = 50, word_gap: int = 0, volume: int = 100,
                   seed: int | None = None) -> np.ndarray:
        """Speak ``text``; int16 samples (T,) at :attr:`sample_rate`.

        ``rate`` is in words per minute (80–450), ``pitch`` and ``pitch_range`` 0–99 (50 is the
        voice's own), ``word_gap`` in units of 10 ms, ``volume`` 0–200. ``seed`` fixes the
        random breath noise of voices that have it.
        """
        if language not in self.languages:
            raise ConfigError(f"unknown eSpeak language {language!r}; valid: {', '.join(sorted(self.languages))}")
        if variant is not None and variant not in self.variants:
            raise ConfigError(f"unknown eSpeak voice variant {variant!r}; valid: {', '.join(sorted(self.variants))}")
        values = {"rate": rate, "pitch": pitch, "pitch_range": pitch_range, "word_gap": word_gap, "volume": volume}
        for name, value in values.items():
            _, low, high = _PARAMETERS[name]
            if not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise ConfigError(f"eSpeak {name}={value!r}: expected an integer in [{low}, {high}]")
        encoded = text.encode("utf-8")
        with self._lock:
            name = language + (f"+{variant}" if variant else "")
            self._check(self._lib.espeak_SetVoiceByName(name.encode()), f"voice {name!r}")
            for parameter, value in values.items():
                self._check(self._lib.espeak_SetParameter(_PARAMETERS[parameter][0], int(value), 0), parameter)
            if seed is not None:
                self._lib.espeak_ng_SetRandSeed(seed)
                if self._libc_srand is not None:  # eSpeak's breath noise uses the C library's rand()
                    self._libc_srand(ctypes.c_uint(seed & 0xFFFFFFFF))
            self._chunks = []
            status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self._check(status, f"synthesis of {text[:40]!r}")
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise EspeakError(f"eSpeak NG: {what}: {_STATUS.get(status, f'error {status}')}")


def _libc_srand():
    """The C library's ``srand``, which seeds the noise of eSpeak's breathy voices; None where unavailable."""
    try:
        return ctypes.CDLL(None).srand
    except (OSError, AttributeError, TypeError):
        return None


@functools.lru_cache(maxsize=1)
def engine() -> Espeak:
    """This process's eSpeak NG engine (created on first use)."""
    return Espeak()
