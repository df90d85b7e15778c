"""How far streamed (chunked) whisper features drift from the reference's exact ones, per clip.

For every clip: the mean and min cosine similarity over the T frames between the features a
live `ChunkedEncoder` streams (pushed 20 ms at a time) and `encode_exact`'s, and what each mode
costs: exact mode's whole run (it starts when the caller stops talking), the streaming run's
total compute and its flush (the latency left after the caller stops).

    python -m benchmarks.encoder_drift [--model DIR] [--audio-dir DIR] [--device cuda]

With --model (a model directory) the encoder is its small.pt, and the language model decodes
each clip greedily (a2a) from both feature sets: token agreement says how much of the answer
stays the same. Without it the encoder has the released whisper-small shapes and a seeded
random init and only features are compared. With random weights (init-random) the numbers only
exercise the mechanism: a random encoder attends almost uniformly, so the padding frames exact
mode sees weigh more than in a trained one.
"""

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import soundfile as sf
import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.model import AudioEncoder

from benchmarks.machine import cpu_name
from realtime.audio.encoder import BLOCK_FRAMES, ChunkedEncoder, encode_exact, load_whisper_encoder
from realtime.decoding.generate import PrefillInput, generate_tokens
from realtime.decoding.options import DecodingOptions
from realtime.model import checkpoint
from realtime.model.config import WhisperDims
from realtime.model.lm import OmniLM
from realtime.model.prompts import Task, build_prompt
from realtime.model.tokens import INPUT_SAMPLE_RATE_HZ, WHISPER_FRAME_SAMPLES

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "encoder_drift.json"
SEED = 0


def random_small_encoder(device: str) -> AudioEncoder:
    """whisper-small's audio encoder shapes with a seeded random init."""
    torch.manual_seed(SEED)
    dims = WhisperDims()
    encoder = AudioEncoder(
        dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer
    )
    return encoder.to(device).eval()


def timed(fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    """fn's result and its wall time in seconds, waiting for the GPU if there is one."""
    start = time.perf_counter()
    result = fn()
    if result.is_cuda:
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def stream(encoder: AudioEncoder, audio, push_samples: int) -> tuple[Tensor, float, float]:
    """Streamed features (T, C), total seconds of compute, and the flush's seconds."""
    chunked, outputs, total = ChunkedEncoder(encoder), [], 0.0
    for i in range(0, len(audio), push_samples):
        features, seconds = timed(lambda i=i: chunked.push(audio[i : i + push_samples]))
        outputs.append(features)
        total += seconds
    features, flush_seconds = timed(chunked.flush)
    return torch.cat([*outputs, features]), total + flush_seconds, flush_seconds


def feature_drift(exact: Tensor, chunked: Tensor) -> dict:
    """Per-frame cosine similarity between the two modes' features (T, C), summarised."""
    cosine = F.cosine_similarity(exact.float(), chunked.float(), dim=-1)  # (T,)
    return {"cosine_mean": cosine.mean().item(), "cosine_min": cosine.min().item()}


def greedy_answer(lm: OmniLM, features: Tensor, steps: int) -> list[list[int]]:
    """The a2a answer's tokens per step (7 audio ids, then the text id) from these features."""
    prompt = build_prompt(Task.A2A, audio_frames=features.shape[0])
    inp = PrefillInput(prompt, lm.adapt(features))
    options = DecodingOptions(max_new_tokens=steps)
    *_, (gen, _) = generate_tokens(lm, lm.new_cache(1), inp, Task.A2A, options)
    return [[*audio, text] for audio, text in zip(gen.audio, gen.text, strict=True)]


def token_agreement(lm: OmniLM, exact: Tensor, chunked: Tensor, steps: int) -> dict:
    """How much of the greedy answer is the same from the two modes' features."""
    a, b = greedy_answer(lm, exact, steps), greedy_answer(lm, chunked, steps)
    shared = min(len(a), len(b))
    same = [a[i] == b[i] for i in range(shared)]
    text_same = sum(a[i][-1] == b[i][-1] for i in range(shared))
    audio_same = sum(
        x == y for i in range(shared) for x, y in zip(a[i][:-1], b[i][:-1], strict=True)
    )
    return {
        "steps_compared": shared,
        "first_divergent_step": same.index(False) if False in same else None,
        "text_agreement": text_same / shared if shared else None,
        "audio_agreement": audio_same / (7 * shared) if shared else None,
    }


def measure_clip(encoder: AudioEncoder, audio, push_samples: int, repeats: int) -> dict:
    """Drift and timings of one clip; each time is the fastest of `repeats` runs."""
    exact_runs = [timed(lambda: encode_exact(encoder, audio)) for _ in range(repeats)]
    chunked_runs = [stream(encoder, audio, push_samples) for _ in range(repeats)]
    exact, chunked = exact_runs[0][0], chunked_runs[0][0]
    return {
        "seconds": len(audio) / INPUT_SAMPLE_RATE_HZ,
        "frames": len(exact),
        **feature_drift(exact, chunked),
        "exact_ms": 1000 * min(seconds for _, seconds in exact_runs),
        "chunked_total_ms": 1000 * min(total for _, total, _ in chunked_runs),
        "chunked_flush_ms": 1000 * min(flush for _, _, flush in chunked_runs),
    }


def machine(device: str) -> dict:
    return {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
    }


COLUMNS = {  # name: format
    "seconds": ".2f",
    "frames": "d",
    "cosine_mean": ".4f",
    "cosine_min": ".4f",
    "exact_ms": ".1f",
    "chunked_total_ms": ".1f",
    "chunked_flush_ms": ".1f",
}


def print_table(clips: dict[str, dict]) -> None:
    print(f"{'clip':24}" + "".join(f"{name:>18}" for name in COLUMNS))
    for name, row in clips.items():
        print(f"{name:24}" + "".join(f"{row[c]:>18{spec}}" for c, spec in COLUMNS.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (else a random encoder)")
    parser.add_argument("--steps", type=int, default=48, help="answer steps to compare")
    parser.add_argument("--audio-dir", type=Path, default=REPO / "tests" / "data")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--push-samples", type=int, default=WHISPER_FRAME_SAMPLES)
    parser.add_argument("--repeats", type=int, default=3, help="report the fastest run")
    args = parser.parse_args()
    lm = None
    if args.model:
        files = checkpoint.resolve(str(args.model), offline=True)
        encoder = load_whisper_encoder(files.whisper, args.device)
        lm = checkpoint.load_lm(files, args.device, torch.float32)
    else:
        encoder = random_small_encoder(args.device)
    paths = sorted(args.audio_dir.glob("*.wav"))
    audios = {path.name: sf.read(path, dtype="float32")[0] for path in paths}
    measure_clip(encoder, audios[paths[0].name], args.push_samples, 1)  # warm-up, not reported
    clips = {
        name: measure_clip(encoder, audio, args.push_samples, args.repeats)
        for name, audio in audios.items()
    }
    print_table(clips)
    if lm is not None:
        for name, audio in audios.items():
            exact, chunked = encode_exact(encoder, audio), stream(encoder, audio, 320)[0]
            with torch.inference_mode():
                clips[name]["tokens"] = token_agreement(lm, exact, chunked, args.steps)
            print(f"{name:24} tokens: {clips[name]['tokens']}")
    report = {
        "machine": machine(args.device),
        "model": str(args.model) if args.model else f"random whisper-small, seed {SEED}",
        "block_frames": BLOCK_FRAMES,
        "push_samples": args.push_samples,
        "repeats": args.repeats,
        "clips": clips,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
