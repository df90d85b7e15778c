"""What a streamed frame of speech costs the vocoder, and how close it is to the whole decode.

SNAC 24 kHz at its released shapes (random weights unless --model has snac/), noise off so the
outputs compare. Per 85.33 ms frame of speech, with `--frames` frames per utterance:

- `stream`: ours (realtime.audio.vocoder), one frame per step, every frame decoded once with state;
  also `stream xB`: B streams in one batched call per step, per stream-frame; on a CPU also
  `convs` and `convs xB`: the same with the upsampling and 1x1 layers as convolutions (as a GPU
  runs them) instead of the CPU's matrix products;
- `window`: overlap and keep the middle, a 5-frame window (2 left, 2 lookahead) per frame: what
  this project did before its streaming decoder, and the usual fix for the reference's seams;
- `reference`: the reference's streaming, 4-frame chunks decoded with no context (seams);
- `whole`: one decode of the whole utterance, per frame: the offline twin, a lower bound.

Each row gives ms per frame (the best of `--rounds` interleaved rounds, as this VM's speed
drifts), the real-time factor (ms per frame / 85.33: below 1 keeps up with speech), the frames
needed before the first audio, and the relative L2 distance to the whole decode.

    python -m benchmarks.vocoder_speed [--device cuda] [--frames 48] [--batch 4]

Writes benchmarks/results/vocoder_speed-<cpu or GPU name>.json.
"""

import argparse
import json
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from snac import SNAC

from benchmarks.machine import cpu_name
from realtime.audio.vocoder import Vocoder, VocoderStream, disable_noise, load_snac
from realtime.model import checkpoint, tokens
from realtime.model.config import SnacConfig

RESULTS = Path(__file__).resolve().parent / "results"
WINDOW_LEFT, WINDOW_LOOKAHEAD = 2, 2  # frames of context on each side of the kept frame
REFERENCE_CHUNK = 4  # frames per context-free chunk in the reference's streaming


def stream(vocoder: Vocoder, utterances: list[torch.Tensor]) -> list[np.ndarray]:
    """Ours: each utterance in its own stream, one frame per step, all stepped together."""
    streams = [VocoderStream(device=vocoder.device) for _ in utterances]
    chunks = [[] for _ in utterances]
    for index in range(len(utterances[0])):
        for s, frames in zip(streams, utterances, strict=True):
            s.push(frames[index])
        for out, pcm in zip(chunks, vocoder.step(streams), strict=True):
            out.append(pcm)
    for out, pcm in zip(chunks, vocoder.flush(streams), strict=True):
        out.append(pcm)
    return [np.concatenate(out) for out in chunks]


def window(vocoder: Vocoder, frames: torch.Tensor) -> np.ndarray:
    """Overlap and keep the middle: per frame, decode it with its context, keep its samples."""
    kept = []
    for index in range(len(frames)):
        first = max(0, index - WINDOW_LEFT)
        audio = vocoder.decode_frames(frames[first : index + 1 + WINDOW_LOOKAHEAD][None])[0]
        start = (index - first) * tokens.FRAME_SAMPLES
        kept.append(audio[start : start + tokens.FRAME_SAMPLES].cpu().numpy())
    return np.concatenate(kept)


def reference(vocoder: Vocoder, frames: torch.Tensor) -> np.ndarray:
    """The reference's streaming: context-free chunks of REFERENCE_CHUNK frames."""
    chunks = range(0, len(frames), REFERENCE_CHUNK)
    pieces = [vocoder.decode_frames(frames[i : i + REFERENCE_CHUNK][None])[0] for i in chunks]
    return torch.cat(pieces).cpu().numpy()


def whole(vocoder: Vocoder, frames: torch.Tensor) -> np.ndarray:
    return vocoder.decode_frames(frames[None])[0].cpu().numpy()


def timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def load(args) -> Vocoder:
    """SNAC as the runtime loads it (weight norm baked in), from --model or random weights."""
    if args.model:
        directory = checkpoint.resolve(args.model, offline=True).snac
        snac = load_snac(directory, args.device)
    else:
        with tempfile.TemporaryDirectory() as directory:
            torch.manual_seed(0)
            config = asdict(SnacConfig())
            Path(directory, "config.json").write_text(json.dumps(config))
            torch.save(SNAC(**config).state_dict(), Path(directory, "pytorch_model.bin"))
            snac = load_snac(Path(directory), args.device)
    disable_noise(snac)  # so the contenders' outputs compare
    return Vocoder(snac)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model directory with snac/ (default: random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=48, help="frames per utterance")
    parser.add_argument("--batch", type=int, default=4, help="streams stepped together")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="results file (default: results/...)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"vocoder_speed: --device {args.device}, but torch sees no CUDA GPU here")
        return 2
    vocoder = load(args)
    generator = torch.Generator().manual_seed(1)
    shape = (args.frames, tokens.AUDIO_LAYERS)
    utterances = [
        torch.randint(0, tokens.CODEBOOK_SIZE, shape, generator=generator).to(device)
        for _ in range(args.batch)
    ]
    frames = utterances[0]
    contenders = {
        "stream": lambda: stream(vocoder, [frames])[0],
        f"stream x{args.batch}": lambda: stream(vocoder, utterances)[0],
    }
    if device.type == "cpu":
        convs = Vocoder(vocoder.snac, products=False)
        contenders["convs"] = lambda: stream(convs, [frames])[0]
        contenders[f"convs x{args.batch}"] = lambda: stream(convs, utterances)[0]
    contenders |= {
        "window": lambda: window(vocoder, frames),
        "reference": lambda: reference(vocoder, frames),
        "whole": lambda: whole(vocoder, frames),
    }
    # frames decoded per call: every stream's, where B streams go together
    per_frame = {n: args.frames * (args.batch if " x" in n else 1) for n in contenders}
    best, outputs = {}, {}
    with torch.inference_mode():
        for name, fn in contenders.items():  # warm-up
            outputs[name] = fn()
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                seconds, _ = timed(fn, device)
                best[name] = min(best.get(name, float("inf")), seconds)
    target = outputs["whole"]
    first_audio = dict.fromkeys(["stream", "convs"], vocoder.first_audio_delay_frames)
    first_audio["window"] = 1 + WINDOW_LOOKAHEAD
    first_audio |= {"reference": REFERENCE_CHUNK, "whole": args.frames}
    rows = []
    print(f"{'':<12}{'ms/frame':>10}{'x real time':>13}{'first audio':>13}{'rel L2':>10}")
    for name in contenders:
        ms = 1e3 * best[name] / per_frame[name]
        error = float(np.linalg.norm(outputs[name] - target) / np.linalg.norm(target))
        frames_first = first_audio.get(name.split()[0])
        row = {"contender": name, "ms_per_frame": ms, "real_time_factor": ms / tokens.FRAME_MS}
        row |= {"first_audio_frames": frames_first, "rel_l2_vs_whole": error}
        rows.append(row)
        print(f"{name:<12}{ms:>10.2f}{ms / tokens.FRAME_MS:>13.3f}{frames_first:>13}{error:>10.1e}")
    result = {"machine": machine(device), "args": {**vars(args), "out": None}, "rows": rows}
    where = torch.cuda.get_device_name(device).replace(" ", "_") if device.type == "cuda" else "cpu"
    out = args.out or RESULTS / f"vocoder_speed-{where}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def machine(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "platform": platform.platform(),
        "device": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


if __name__ == "__main__":
    raise SystemExit(main())
