"""webrtcvad (aggressiveness 0..3) against Silero VAD (thresholds 0.3/0.5/0.7) as speech-onset
detectors, each driven through realtime.turns.detector.TurnDetector, so a "barge-in" is exactly
what the server would act on (60 ms of voiced frames in a row, TurnOptions' default).

Material, all 16 kHz and made here with sox from tests/data:
  noise   white, pink and brown noise (sox synth) at 20, 10 and 5 dB SNR
  music   sox-synthesised plucked and sustained chords in sequence (not recorded music), 10/5 dB
  echo    the agent's own voice (another clip), telephone band (300-3400 Hz), delayed 40..120 ms
          and attenuated 15, 20 and 25 dB, playing while the caller is silent and under them

Two kinds of trial per condition: the background alone (10 s: every onset is a false barge-in,
and the time spent in such false turns is time the agent would stay silent), and each caller
clip placed 1.5 s into the background (an onset before the speech is a false barge-in; none
within 500 ms of the speech is a missed onset; otherwise its delay from the speech start, which
comes from the clean clip's own energy: the first 10 ms within 20 dB of its loudest). A speech
trial whose detector is still in a false turn when the speech starts is "masked": no onset can
be heard there.

    python -m benchmarks.vad_compare

Writes benchmarks/results/vad_compare.json and prints a Markdown table (a minute or two).
"""

import inspect
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.machine import describe, machine_tag
from realtime.audio.io import from_pcm16, load_audio, to_pcm16
from realtime.model import tokens
from realtime.turns.detector import VAD_FRAME_MS, VAD_FRAME_SAMPLES, TurnDetector, TurnEvent
from realtime.turns.options import TurnOptions
from realtime.turns.silero import SileroVAD

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
RESULTS = REPO / "benchmarks" / "results" / "vad_compare.json"
RATE_HZ = tokens.INPUT_SAMPLE_RATE_HZ
LEAD_S = 1.5  # background before the caller speaks
TAIL_S = 0.6  # speech fed after the true onset: enough to find it within ONSET_WINDOW_S
BACKGROUND_S = 10.0  # each background-alone trial
ONSET_WINDOW_S = 0.5  # an onset later than this after the speech starts is missed
EARLY_S = 0.1  # an onset this much before the energy onset still counts as the speech's
ENERGY_FRAME_S = 0.01
# Speech starts at the first 10 ms within this of the clip's loudest: the Mini-Omni samples
# have room noise and breath 25..35 dB down before the first word.
ENERGY_RANGE_DB = 20.0
SNRS_DB = (20, 10, 5)
MUSIC_SNRS_DB = (10, 5)
ECHO_GAINS_DB = (-15, -20, -25)
ECHO_DELAYS_S = (0.04, 0.08, 0.12)
AGGRESSIVENESS = (0, 1, 2, 3)
SILERO_THRESHOLDS = (0.3, 0.5, 0.7)
CHORDS = ("C3 E3 G3", "A2 C3 E3", "F2 A2 C3", "G2 B2 D3")


def sox(source: list[str], effects: list[str]) -> np.ndarray:
    """float32 16 kHz mono from sox (repeatable: the same noise every run)."""
    raw = ["-t", "raw", "-r", str(RATE_HZ), "-e", "signed", "-b", "16", "-c", "1", "-"]
    command = ["sox", "-R", *source, *raw, *effects]
    out = subprocess.run(command, capture_output=True, check=True).stdout
    return from_pcm16(np.frombuffer(out, np.int16))


def noise(kind: str, seconds: float) -> np.ndarray:
    return sox(["-n", "-r", str(RATE_HZ), "-c", "1"], ["synth", str(seconds), f"{kind}noise"])


def music(seconds: float) -> np.ndarray:
    """Chords, plucked then sustained (sine with a fade), 0.5 s each, round and round."""
    notes = []
    for i in range(int(np.ceil(seconds / 0.5))):
        tone = "pluck" if i % 2 == 0 else "sine"
        chord = [a for note in CHORDS[i // 2 % len(CHORDS)].split() for a in (tone, note)]
        effects = ["synth", "0.5", *chord, "remix", "-", "fade", "0.02", "0.5", "0.1"]
        notes.append(sox(["-n", "-r", str(RATE_HZ), "-c", "3"], effects))  # a channel per note
    return np.concatenate(notes)


def echo(clips: list[Path], gain_db: float, seconds: float) -> np.ndarray:
    """The agent's voice as the caller's microphone hears it back: clips in turn, 0.3 s apart."""
    parts, total, i = [], 0.0, 0
    while total < seconds:
        delay = ECHO_DELAYS_S[i % len(ECHO_DELAYS_S)]
        band = ["highpass", "300", "lowpass", "3400", "gain", str(gain_db)]
        parts.append(sox([str(clips[i % len(clips)])], [*band, "pad", str(delay), "0.3"]))
        total, i = total + len(parts[-1]) / RATE_HZ, i + 1
    return np.concatenate(parts)[: int(seconds * RATE_HZ)]


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def energy_onset(clip: np.ndarray) -> tuple[float, float]:
    """(seconds to the clip's first sound, RMS of its voiced 10 ms frames)."""
    size = int(ENERGY_FRAME_S * RATE_HZ)
    frames = clip[: len(clip) // size * size].reshape(-1, size)
    db = 20 * np.log10(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) + 1e-10)
    loud = db >= db.max() - ENERGY_RANGE_DB
    return float(np.argmax(loud) * ENERGY_FRAME_S), rms(frames[loud])


@dataclass(frozen=True)
class Condition:
    name: str
    background: Callable[[float], np.ndarray]  # seconds -> background at the speech level 1.0
    scaled: bool  # the background is scaled to an SNR against the caller's speech


def conditions(agent_clips: list[Path]) -> Iterator[tuple[Condition, float]]:
    """(condition, SNR in dB: the background's level relative to the caller's speech)."""
    yield Condition("clean", lambda s: np.zeros(int(s * RATE_HZ), np.float32), False), 0.0
    for kind in ("white", "pink", "brown"):
        for snr in SNRS_DB:
            yield Condition(f"{kind} {snr} dB", lambda s, k=kind: noise(k, s), True), snr
    for snr in MUSIC_SNRS_DB:
        yield Condition(f"music {snr} dB", music, True), snr
    for gain in ECHO_GAINS_DB:
        yield Condition(f"echo {gain} dB", lambda s, g=gain: echo(agent_clips, g, s), False), 0.0


class TurnDetectorVAD:
    """Silero behind webrtcvad's `is_speech(bytes, rate)`, for a TurnDetector that predates its
    `speech=` argument (the benchmark then swaps it in as the detector's `_vad`)."""

    def __init__(self, vad: SileroVAD) -> None:
        self.vad = vad

    def is_speech(self, pcm: bytes, rate_hz: int) -> bool:
        return self.vad.is_speech(np.frombuffer(pcm, np.int16))


def make_detector(setting: str) -> TurnDetector:
    kind, value = setting.split()
    if kind == "webrtcvad":
        return TurnDetector(TurnOptions(aggressiveness=int(value)))
    silero = SileroVAD(threshold=float(value))
    if "speech" in inspect.signature(TurnDetector).parameters:
        return TurnDetector(TurnOptions(), speech=silero)  # type: ignore[call-arg]
    detector = TurnDetector(TurnOptions())
    detector._vad = TurnDetectorVAD(silero)
    return detector


def run(detector: TurnDetector, audio: np.ndarray, clock: list[float]) -> tuple[list, np.ndarray]:
    """Onset times (end of the triggering frame, s) and, per frame, whether a turn is open."""
    pcm, found, in_turn = to_pcm16(audio), [], []
    for i in range(len(pcm) // VAD_FRAME_SAMPLES):
        t = (i + 1) * VAD_FRAME_MS / 1000
        start = time.perf_counter()
        events = detector.push(pcm[i * VAD_FRAME_SAMPLES : (i + 1) * VAD_FRAME_SAMPLES], t)
        clock.append(time.perf_counter() - start)
        found += [t for e in events if e.kind is TurnEvent.STARTED]
        in_turn.append(detector.in_turn)
    return found, np.array(in_turn)


def material() -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray, float]]]:
    """Background-alone trials (name, audio) and speech trials (name, audio, true onset s)."""
    clips = sorted(DATA.glob("*.wav"))
    speech = [load_audio(c) for c in clips]
    level = float(np.mean([energy_onset(s)[1] for s in speech]))
    alone, trials = [], []
    for condition, snr in conditions(clips):
        print(f"  making {condition.name}", flush=True)
        gain = level * 10 ** (-snr / 20) if condition.scaled else 1.0
        bg = condition.background(BACKGROUND_S)
        alone.append((condition.name, bg * gain / (rms(bg) if condition.scaled else 1.0)))
        for i, clip in enumerate(speech):
            onset_s, clip_level = energy_onset(clip)
            cut = clip[: int((onset_s + TAIL_S) * RATE_HZ)]
            agent = [c for c in clips if c != clips[i]]  # the echo is never the caller's voice
            if condition.name.startswith("echo"):
                bg = echo(agent, int(condition.name.split()[1]), LEAD_S + len(cut) / RATE_HZ)
            else:
                bg = condition.background(LEAD_S + len(cut) / RATE_HZ + 0.1)
            if condition.scaled:
                bg = bg * clip_level * 10 ** (-snr / 20) / rms(bg)
            mix = bg[: int(LEAD_S * RATE_HZ) + len(cut)].copy()
            mix[int(LEAD_S * RATE_HZ) :] += cut
            trials.append((condition.name, mix, LEAD_S + onset_s))
    return alone, trials


def evaluate(setting: str, alone: list, trials: list) -> dict:
    """False barge-ins on the background alone; per speech trial: a false onset before the
    speech, the speech masked (a false turn still open when it starts), missed, or its delay."""
    clock: list[float] = []
    runs = [run(make_detector(setting), bg, clock) for _, bg in alone]
    false_alone = sum(len(found) for found, _ in runs)
    busy = float(np.mean(np.concatenate([in_turn for _, in_turn in runs])))
    false_lead = masked = missed = 0
    delays, by_condition = [], {}
    for name, mix, truth in trials:
        found, in_turn = run(make_detector(setting), mix, clock)
        row = by_condition.setdefault(name, {"false": 0, "masked": 0, "missed": 0, "delays": []})
        early = [t for t in found if t < truth - EARLY_S]
        row["false"] += bool(early)
        if in_turn[int((truth - EARLY_S) * 1000) // VAD_FRAME_MS - 1]:
            row["masked"] += 1
            continue
        hits = [t - truth for t in found if truth - EARLY_S <= t <= truth + ONSET_WINDOW_S]
        if hits:
            delays.append(hits[0])
            row["delays"].append(round(hits[0] * 1000))
        else:
            row["missed"] += 1
    for row in by_condition.values():
        false_lead, masked = false_lead + row["false"], masked + row["masked"]
        missed += row["missed"]
    ms = np.array(delays) * 1000
    return {
        "setting": setting,
        "false_bargeins_background_alone": false_alone,
        "false_bargeins_per_minute": round(false_alone / (len(alone) * BACKGROUND_S / 60), 2),
        "background_time_in_false_turn": round(busy, 3),
        "trials_with_false_bargein_before_speech": false_lead,
        "trials_masked": masked,
        "missed_onsets": missed,
        "trials": len(trials),
        "delay_ms_p50": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "delay_ms_p90": round(float(np.percentile(ms, 90)), 1) if len(ms) else None,
        "us_per_frame": round(float(np.median(clock)) * 1e6, 1),
        "by_condition": by_condition,
    }


def table(rows: list[dict]) -> str:
    head = (
        "| detector | false barge-ins /min alone | time in false turn alone "
        "| trials: false onset before speech | masked | missed | onset delay p50 / p90 ms "
        "| us/frame |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['setting']} | {r['false_bargeins_per_minute']} "
        f"| {r['background_time_in_false_turn']:.0%} "
        f"| {r['trials_with_false_bargein_before_speech']}/{r['trials']} "
        f"| {r['trials_masked']} | {r['missed_onsets']} "
        f"| {r['delay_ms_p50']} / {r['delay_ms_p90']} | {r['us_per_frame']} |"
        for r in rows
    ]
    return head + "\n".join(lines)


def main() -> None:
    started = time.perf_counter()
    print("making the material with sox", flush=True)
    alone, trials = material()
    settings = [f"webrtcvad {a}" for a in AGGRESSIVENESS]
    settings += [f"silero {t}" for t in SILERO_THRESHOLDS]
    rows = []
    for setting in settings:
        rows.append(evaluate(setting, alone, trials))
        print(f"  {setting}: done at {time.perf_counter() - started:.0f} s", flush=True)
    result = {
        "machine": describe("cpu") | {"tag": machine_tag()},
        "options": {"speech_start_ms": TurnOptions().speech_start_ms, "frame_ms": VAD_FRAME_MS},
        "material": {
            "background_alone_s": BACKGROUND_S * len(alone),
            "speech_trials": len(trials),
            "conditions": sorted({name for name, _ in alone}),
            "music": "sox-synthesised chords (pluck and sine), not recorded music",
        },
        "results": rows,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {RESULTS.relative_to(REPO)} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
