"""The turn-taking benchmark's questions: complete ones, and ones with a pause in mid-sentence,
synthesised with espeak-ng and resampled with sox into tests/data/turns/, with a manifest
(clips.json) of each clip's kind, text and speech segments.

A paused question is spoken as one sentence with an SSML break at the cut, so the words before
it keep the rising, unfinished melody of a sentence that goes on; the break's silence is then
set to the clip's pause exactly. The speech segments are measured from the written audio (an
energy threshold on 10 ms frames), so the benchmark knows where speech ends and where the
pause lies without espeak at run time.

    python -m benchmarks.turn_clips          # rewrites tests/data/turns/
"""

import json
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "turns"
RATE_HZ = 16_000
LEAD_MS = 300  # silence before the speech
TAIL_MS = 100  # after it (the benchmark streams its own silence after each clip)
ESPEAK_WPM = 165
ESPEAK_VOICE = "en-us"
BREAK_MS = 500  # the SSML break at the cut, found again in the audio and resized
FRAME_MS = 10  # of the energy measurement
SPEECH_DB = -35.0  # a frame is speech above this, relative to the clip's loudest frame
MIN_GAP_MS = 250  # quieter stretches shorter than this (stops, word gaps) stay inside speech
CUT = "|"  # where a paused question's pause goes


@dataclass(frozen=True)
class Clip:
    name: str
    text: str  # a paused clip's text marks its cut with CUT
    pause_ms: int = 0  # 0: a complete question


CLIPS = (
    Clip("complete_time", "What time is it in Tokyo?"),
    Clip("complete_rain", "Will it rain tomorrow?"),
    Clip("complete_capital", "What is the capital of Australia?"),
    Clip("complete_soup", "How do I make a simple tomato soup at home?"),
    Clip("complete_planets", "Can you tell me why the planets move around the sun?"),
    Clip("complete_trip", "What should I pack for a week long trip to the mountains in winter?"),
    Clip("paused_france", "What is the capital of | France?", 400),
    Clip("paused_rome", "Tell me about the history of | the Roman empire.", 600),
    Clip("paused_egg", "How long should I boil | an egg?", 800),
    Clip("paused_movie", "Can you recommend a good movie for | a rainy evening?", 1000),
    Clip("paused_moon", "How far is it from the earth to | the moon?", 1200),
    Clip("paused_thanks", "How do you say thank you in | Japanese?", 600),
    Clip("paused_rainbow", "Could you explain how | a rainbow forms?", 800),
    Clip("paused_gift", "What is a good gift for my | sister's birthday?", 1000),
)


def synthesise(text: str, workdir: Path) -> np.ndarray:
    """espeak-ng's speech of `text` (CUT becomes an SSML break), as 16 kHz mono int16."""
    ssml = "<speak>" + text.replace(CUT, f'<break time="{BREAK_MS}ms"/>') + "</speak>"
    raw, resampled = workdir / "espeak.wav", workdir / "16k.wav"
    subprocess.run(
        ["espeak-ng", "-v", ESPEAK_VOICE, "-s", str(ESPEAK_WPM), "-m", "-w", str(raw), ssml],
        check=True,
    )
    subprocess.run(
        ["sox", str(raw), "-r", str(RATE_HZ), "-c", "1", "-b", "16", str(resampled)], check=True
    )
    with wave.open(str(resampled)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), np.int16)


def speech_segments(pcm: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) in ms of the speech in `pcm`: frames above SPEECH_DB, with gaps shorter
    than MIN_GAP_MS closed."""
    frame = RATE_HZ * FRAME_MS // 1000
    frames = pcm[: len(pcm) // frame * frame].astype(np.float64).reshape(-1, frame)
    rms = np.sqrt((frames**2).mean(axis=1)) + 1e-9  # (n_frames,)
    loud = 20 * np.log10(rms / rms.max()) > SPEECH_DB
    segments: list[list[int]] = []
    for i in np.flatnonzero(loud):
        start, end = int(i) * FRAME_MS, (int(i) + 1) * FRAME_MS
        if segments and start - segments[-1][1] < MIN_GAP_MS:
            segments[-1][1] = end
        else:
            segments.append([start, end])
    return [(start, end) for start, end in segments]


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE_HZ * ms // 1000, np.int16)


def samples(ms: int) -> int:
    return RATE_HZ * ms // 1000


def shape(pcm: np.ndarray, pause_ms: int) -> np.ndarray:
    """The speech trimmed, its break (the longest gap, if `pause_ms`) resized to `pause_ms`,
    between LEAD_MS and TAIL_MS of silence."""
    segments = speech_segments(pcm)
    if pause_ms:
        gaps = [(b[0] - a[1], a[1], b[0]) for a, b in zip(segments, segments[1:], strict=False)]
        if not gaps:
            raise ValueError("no pause found at the cut")
        _, gap_start, gap_end = max(gaps)
        before = pcm[samples(segments[0][0]) : samples(gap_start)]
        after = pcm[samples(gap_end) : samples(segments[-1][1])]
        speech = np.concatenate([before, silence(pause_ms), after])
    else:
        speech = pcm[samples(segments[0][0]) : samples(segments[-1][1])]
    return np.concatenate([silence(LEAD_MS), speech, silence(TAIL_MS)])


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE_HZ)
        wav.writeframes(pcm.tobytes())


def make(clip: Clip, workdir: Path) -> dict:
    """Write `clip`'s WAV into OUT; its manifest entry."""
    pcm = shape(synthesise(clip.text, workdir), clip.pause_ms)
    write_wav(OUT / f"{clip.name}.wav", pcm)
    segments = speech_segments(pcm)
    expected = 2 if clip.pause_ms else 1
    if len(segments) != expected:
        raise ValueError(f"{clip.name}: {len(segments)} speech segments, expected {expected}")
    return {
        "file": f"{clip.name}.wav",
        "kind": "paused" if clip.pause_ms else "complete",
        "text": " ".join(clip.text.replace(CUT, " ").split()),
        "pause_ms": clip.pause_ms or None,
        "duration_ms": len(pcm) * 1000 // RATE_HZ,
        "speech_ms": [list(segment) for segment in segments],
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        entries = [make(clip, Path(tmp)) for clip in CLIPS]
    manifest = {
        "rate_hz": RATE_HZ,
        "made_by": "python -m benchmarks.turn_clips",
        "speech_threshold": f"{SPEECH_DB} dB of the loudest {FRAME_MS} ms frame, gaps under "
        f"{MIN_GAP_MS} ms closed",
        "clips": entries,
    }
    (OUT / "clips.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for entry in entries:
        print(f"{entry['file']:24} {entry['duration_ms']:5} ms  speech {entry['speech_ms']}")
    total = sum((OUT / entry["file"]).stat().st_size for entry in entries)
    print(f"{len(entries)} clips, {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    main()
