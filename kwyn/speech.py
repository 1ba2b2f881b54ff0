"""Synthetic speech from espeak-ng, offline: the library and its data ship in the espeakng-loader wheel.

We call libespeak-ng's C API through ctypes (no system package, no phonemizer wrapper).
Determinism: the same text and settings give the same samples, whatever was synthesised before
in the process and in whatever order (generated datasets are reproducible): each utterance is
synthesised in a child forked from a parent that initialised the library but never synthesised
(see _synth_in_fork). That parent is a small helper process (`Speaker`, started on first use, one
per thread that speaks): forking it takes well under a millisecond, where forking a process that has
imported torch took 12 ms, as long as the synthesis itself. Linux/macOS only (fork).
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

# espeak_AUDIO_OUTPUT: SYNCHRONOUS = espeak_Synth returns once all audio went to the callback
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of exiting the process
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4  # espeak_PARAMETER
_EE_OK = 0

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Voice(ctypes.Structure):  # espeak_VOICE
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_lock = threading.Lock()
_lib = None
_native_rate = 0
_chunks: list[np.ndarray] = []


@_SYNTH_CALLBACK
def _collect(wav, n_samples, _events):
    if n_samples > 0:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
    return 0  # 0 = go on synthesising


def _library():
    """libespeak-ng, initialised once per process; returns (lib, native sample rate)."""
    global _lib, _native_rate
    if _lib is None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise ImportError("kwyn.speech needs the `espeakng-loader` wheel "
                              "(pip install espeakng-loader==0.2.4)") from err
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        # the path is the directory that *contains* espeak-ng-data
        data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {rate}) with data at {data_parent.decode()}")
        lib.espeak_SetSynthCallback(_collect)
        _lib, _native_rate = lib, rate
    return _lib, _native_rate


def list_voices() -> list[dict]:
    """The installed espeak-ng voices: name, identifier (usable as `voice`), languages, gender."""
    with _lock:
        lib, _ = _library()
        voices = lib.espeak_ListVoices(None)
        out = []
        i = 0
        while voices[i]:
            v = voices[i].contents
            out.append({"name": v.name.decode(), "identifier": v.identifier.decode(),
                        "languages": _languages(v.languages), "gender": {1: "male", 2: "female"}.get(v.gender, "")})
            i += 1
    return out


def _languages(ptr: int) -> list[str]:
    """espeak_VOICE.languages: (priority byte, NUL-terminated name) pairs, ended by a zero priority."""
    langs, pos = [], ptr
    while ctypes.c_ubyte.from_address(pos).value != 0:
        name = ctypes.string_at(pos + 1)
        langs.append(name.decode())
        pos += 2 + len(name)
    return langs


def _synth_in_fork(lib, text: str, voice: str, rate_wpm: int, pitch: int) -> bytes:
    """Synthesise in a forked child, so every call starts from the same pristine library state.

    espeak-ng keeps state between utterances that no API call resets (a static pitch-flutter phase
    in its wave generator, and random draws): in one process, the same text comes out a few samples
    different each time. A child forked after initialisation (the parent never synthesises)
    starts from identical memory every time, and its samples come back through a pipe.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: write b"K" + int16 samples, or b"V"/b"E" + message; exit without any cleanup
        try:
            os.close(read_end)
            try:
                message = _synth_here(lib, text, voice, rate_wpm, pitch)
            except BaseException as err:  # noqa: BLE001 - every failure must reach the parent
                message = (b"V" if isinstance(err, ValueError) else b"E") + str(err).encode()
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(message)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read()  # read before waiting: a full pipe would block the child
    os.waitpid(pid, 0)
    return message or b"E"  # nothing written: the child died


def _samples(message: bytes) -> np.ndarray:
    if not message.startswith(b"K"):
        error = ValueError if message.startswith(b"V") else RuntimeError
        raise error(message[1:].decode(errors="replace") or "the espeak-ng child process died")
    return np.frombuffer(message[1:], dtype=np.int16)


_HEADER = struct.Struct("<Q")  # the length of each reply the helper writes


def _serve() -> None:
    """The helper's loop: one JSON request per line on stdin, one length-prefixed reply per request on stdout."""
    lib, _ = _library()
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the library or a child prints goes to stderr, not into the replies
    for line in sys.stdin.buffer:
        message = _synth_in_fork(lib, **json.loads(line))
        replies.write(_HEADER.pack(len(message)) + message)
        replies.flush()


class Speaker:
    """A helper process that initialises espeak-ng once and forks a child per utterance (module doc).

        speaker = Speaker()
        samples = speaker.speak("left", voice="en-us", rate_wpm=160, pitch=50)   # int16 at native_rate
        speaker.close()
    """

    def __init__(self):
        _library()  # fails here, with its message, if the wheel is missing
        # the helper imports this very kwyn, wherever it was imported from
        home = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [home, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen([sys.executable, "-c", "from kwyn.speech import _serve; _serve()"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.native_rate = _native_rate

    def speak(self, text: str, voice: str, rate_wpm: int, pitch: int) -> np.ndarray:
        request = json.dumps({"text": text, "voice": voice, "rate_wpm": int(rate_wpm), "pitch": int(pitch)})
        try:
            self._process.stdin.write(request.encode() + b"\n")
            self._process.stdin.flush()
            header = self._process.stdout.read(_HEADER.size)
        except (BrokenPipeError, ValueError):  # ValueError: the pipe was closed by close()
            header = b""
        if len(header) < _HEADER.size:
            raise RuntimeError(f"the espeak-ng helper process exited (code {self._process.poll()})")
        return _samples(self._process.stdout.read(_HEADER.unpack(header)[0]))

    def close(self) -> None:
        """Stop the helper: it exits when its stdin closes."""
        for pipe in (self._process.stdin, self._process.stdout):
            try:
                pipe.close()
            except BrokenPipeError:  # a helper that died with a request unread
                pass
        self._process.wait()


_speakers = threading.local()
_started: list[Speaker] = []


def _speaker() -> Speaker:
    """This thread's helper process, started on first use (stopped by close_speakers or at exit)."""
    speaker = getattr(_speakers, "speaker", None)
    if speaker is None or speaker._process.poll() is not None:
        speaker = _speakers.speaker = Speaker()
        with _lock:
            _started.append(speaker)
    return speaker


@atexit.register
def close_speakers() -> None:
    """Stop every helper process started so far (threads that speak again start a new one)."""
    with _lock:
        while _started:
            _started.pop().close()


def _synth_here(lib, text: str, voice: str, rate_wpm: int, pitch: int) -> bytes:
    if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
        raise ValueError(f"espeak-ng has no voice {voice!r}; see kwyn.speech.list_voices()")
    for param, value in [(_RATE, rate_wpm), (_PITCH, pitch), (_VOLUME, 100), (_RANGE, 50)]:
        lib.espeak_SetParameter(param, int(value), 0)
    lib.espeak_ng_SetRandSeed(0)
    _chunks.clear()
    data = text.encode("utf-8") + b"\0"
    err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if err != _EE_OK:
        raise RuntimeError(f"espeak_Synth failed with error {err}")
    return b"K" + b"".join(c.tobytes() for c in _chunks)


def synthesize(text: str, *, voice: str = "en-us", rate_wpm: int = 160, pitch: int = 50,
               sample_rate: int = 16000) -> np.ndarray:
    """Speak `text` with espeak-ng; mono float32 in [-1, 1] at `sample_rate` (espeak renders at 22,050 Hz).

    pitch is espeak's 0..100 base pitch (50 = the voice's default); rate_wpm its words per minute (80..450).
    """
    if not text.strip():
        raise ValueError("synthesize needs non-empty text")
    speaker = _speaker()
    samples, native_rate = speaker.speak(text, voice, rate_wpm, pitch), speaker.native_rate
    if sample_rate == native_rate:
        return samples.astype(np.float32) / 32768.0
    import torch
    import torchaudio.functional

    audio = torch.from_numpy(samples.astype(np.float32) / 32768.0)
    audio = torchaudio.functional.resample(audio, native_rate, sample_rate)
    return audio.numpy().astype(np.float32, copy=False)
