"""The `realtime` command: `generate` one answer, `init-random` a test model directory.

Bad input (a missing or unreadable file, an unknown task, a corrupt checkpoint, speech longer
than the model hears) exits with status 2 and one line on stderr, never a traceback.
"""

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from realtime import tokens
from realtime.checkpoint import DEFAULT_MODEL, DTYPES, ModelError
from realtime.config import PRESETS, DecodingOptions
from realtime.prompts import TASKS, Task

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ModelError, ValueError) as exc:  # ours are one-line messages by construction
        print(f"realtime: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="realtime", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=_Parser)
    _add_generate(commands.add_parser("generate", help="answer one utterance or text"))
    _add_init_random(commands.add_parser("init-random", help="write a random-weight model"))
    return parser


def _add_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="model directory or hub name")
    p.add_argument("--task", required=True, choices=[t.value for t in Task])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input-wav", type=Path, help="speech input (any format and rate)")
    source.add_argument("--input-text", help="text input")
    p.add_argument("--output-wav", type=Path, help="write the spoken answer (24 kHz WAV)")
    p.add_argument("--json", type=Path, help="write tokens, text and timings as JSON")
    p.add_argument("--max-new-tokens", type=_positive_int, default=None)
    defaults = DecodingOptions()
    p.add_argument("--temperature", type=float, default=defaults.temperature)
    p.add_argument("--top-k", type=_positive_int, default=defaults.top_k)
    p.add_argument("--top-p", type=float, default=defaults.top_p)
    p.add_argument(
        "--encoder",
        choices=("exact", "chunked"),
        default="exact",
        help="exact: the reference's 30 s encoding; chunked: 2 s streaming blocks",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bfloat16",
        help="language model weights (float32 reproduces the reference bit for bit)",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="for sampled decoding")
    p.add_argument("--offline", action="store_true", help="never download; use local files")
    p.set_defaults(handler=_generate)


def _add_init_random(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", type=Path)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_init_random)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _generate(args: argparse.Namespace) -> int:
    from realtime.audio import load_audio, write_wav  # heavy imports only when needed
    from realtime.runtime import AudioChunk, Request, Result, Runtime, TextDelta

    task = Task(args.task)
    request = Request(task=task, options=_decoding_options(args), encoder=args.encoder)
    if TASKS[task].audio_in != (args.input_wav is not None):
        need = "--input-wav" if TASKS[task].audio_in else "--input-text"
        raise ValueError(f"task {task} takes {need}")
    if args.input_wav is not None:
        request = replace(request, audio=load_audio(args.input_wav))
    else:
        request = replace(request, text=args.input_text)
    _check_device(args.device)
    runtime = Runtime.load(args.model, args.device, DTYPES[args.dtype], offline=args.offline)

    pcm, result = [], None
    for event in runtime.run(request):
        if isinstance(event, TextDelta):
            print(event.text, end="", flush=True)
        elif isinstance(event, AudioChunk):
            pcm.append(event.pcm)
        elif isinstance(event, Result):
            result = event
    print()
    _report(result, args, np.concatenate(pcm) if pcm else np.zeros(0, np.float32), write_wav)
    return 0


def _decoding_options(args: argparse.Namespace) -> DecodingOptions:
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    return DecodingOptions(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but no CUDA GPU is available (use --device cpu)")


def _report(result, args: argparse.Namespace, pcm: np.ndarray, write_wav) -> None:
    t = result.timings
    seconds = pcm.size / tokens.OUTPUT_SAMPLE_RATE_HZ
    print(
        f"{result.steps} steps ({result.stop_reason}), {seconds:.2f} s of speech; "
        + ", ".join(f"{k} {v:.1f}" for k, v in t.items() if v is not None),
        file=sys.stderr,
    )
    if args.output_wav:
        if not TASKS[Task(result.task)].audio_out:
            print(
                f"task {result.task} does not speak: {args.output_wav} not written", file=sys.stderr
            )
        else:
            write_wav(args.output_wav, pcm)
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=1) + "\n")


def _init_random(args: argparse.Namespace) -> int:
    from realtime.init_random import write_random_model

    write_random_model(args.directory, PRESETS[args.preset], seed=args.seed)
    return 0
