"""The `realtime` command: `generate` one answer, `serve` live calls, `call` a server from a
script, `init-random` a test model directory.

Bad input (a missing or unreadable file, an unknown task, a corrupt checkpoint, speech longer
than the model hears) exits with status 2 and one line on stderr, never a traceback.
"""

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, replace
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from realtime.decoding.options import ENCODER_MODES, STEP_PRODUCT_CHOICES, DecodingOptions
from realtime.model import tokens
from realtime.model.checkpoint import DEFAULT_MODEL, DTYPES, ModelError, model_name
from realtime.model.config import PRESETS
from realtime.model.prompts import TASKS, Task

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
    _add_serve(commands.add_parser("serve", help="talk to the model live from a browser"))
    _add_call(commands.add_parser("call", help="speak a WAV into a running server, record"))
    return parser


def _add_generate(p: argparse.ArgumentParser) -> None:
    _add_model_options(p)
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
        choices=ENCODER_MODES,
        default="exact",
        help="exact: the reference's 30 s encoding; chunked: 2 s streaming blocks",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="for sampled decoding")
    p.set_defaults(handler=_generate)


def _add_init_random(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", type=Path)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_init_random)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="model directory or hub name")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto (the default): cuda where torch sees a CUDA GPU, else cpu; cuda is the "
        "first GPU it sees (on a machine with several, CUDA_VISIBLE_DEVICES=N picks GPU N)",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bfloat16",
        help="language model weights (float32 reproduces the reference bit for bit)",
    )
    p.add_argument("--offline", action="store_true", help="never download; use local files")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads for torch and our CPU kernels (default: one per core); fewer keeps "
        "decoding steady when other processes share the cores",
    )


def _add_serve(p: argparse.ArgumentParser) -> None:
    _add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="beyond localhost needs --token")
    p.add_argument("--port", type=_port, default=8080, help="0 picks a free port")
    p.add_argument("--max-sessions", type=_positive_int, default=4, help="concurrent calls")
    p.add_argument(
        "--step-products",
        choices=STEP_PRODUCT_CHOICES,
        default="cublas",
        help="the GPU decode step's products: cuBLAS's, ours with the norms and SwiGLU fused "
        "in, or at each batch size whichever runs faster, with or without --pdl's launches "
        "(timed at start)",
    )
    p.add_argument(
        "--pdl",
        action="store_true",
        help="launch the GPU decode step's kernels as programmatic dependents, each starting "
        "while the one before it finishes (H100 and later; benchmarks/decode_step.py times it)",
    )
    p.add_argument("--token", help="callers must present it (the page reads it from #token=)")
    p.add_argument("--tls-cert", type=Path, help="serve HTTPS (a phone's mic needs it)")
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--max-new-tokens", type=_positive_int, default=None, help="per answer")
    p.add_argument("--max-answer-ms", type=_positive_int, default=None, help="callers may lower it")
    p.add_argument(
        "--transcribe",
        action="store_true",
        help="transcribe the browser callers' turns (the model's own asr, one more row in the "
        "decode step while it runs) and show them their words",
    )
    p.add_argument(
        "--twilio-auth-token",
        default=os.environ.get("TWILIO_AUTH_TOKEN"),
        help="phone calls through Twilio: check its requests' signatures with the account's "
        "auth token (default: $TWILIO_AUTH_TOKEN); needs --public-url",
    )
    p.add_argument(
        "--public-url",
        help="this server's URL as Twilio reaches it (https://host, e.g. a tunnel's), which "
        "Twilio signs and the media stream's URL is built on",
    )
    p.set_defaults(handler=_serve)


def _add_call(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", type=_http_url, help="the server, e.g. http://127.0.0.1:8080")
    p.add_argument("--wav", type=Path, required=True, help="what to say (any audio file)")
    p.add_argument("--out", type=Path, help="write the spoken reply (24 kHz WAV)")
    p.add_argument("--json", type=Path, help="write every event with its arrival time")
    p.add_argument("--token")
    p.add_argument("--max-answer-ms", type=_positive_int, default=None)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the reply")
    p.set_defaults(handler=_call)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535 (0: any free one), got {value}")
    return value


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected http(s)://host:port, got {text!r}")
    return text


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _generate(args: argparse.Namespace) -> int:
    from realtime.audio.io import load_audio, write_wav  # heavy imports only when needed
    from realtime.decoding.runtime import AudioChunk, Request, Result, Runtime, TextDelta

    task = Task(args.task)
    request = Request(task=task, options=_decoding_options(args), encoder=args.encoder)
    if TASKS[task].audio_in != (args.input_wav is not None):
        need = "--input-wav" if TASKS[task].audio_in else "--input-text"
        raise ValueError(f"task {task} takes {need}")
    if args.input_wav is not None:
        request = replace(request, audio=load_audio(args.input_wav))
    else:
        request = replace(request, text=args.input_text)
    _set_up_device(args)
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


def _set_up_device(args: argparse.Namespace) -> None:
    """Settle --device auto, refuse a missing GPU; apply --threads (our C kernels share torch's
    OpenMP threads)."""
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but no CUDA GPU is available (use --device cpu)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)


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
    from realtime.model.init_random import write_random_model

    write_random_model(args.directory, PRESETS[args.preset], seed=args.seed)
    return 0


def _serve(args: argparse.Namespace) -> int:
    options = _server_options(args)
    import asyncio
    import logging

    from realtime.decoding.runtime import Runtime
    from realtime.server import serve

    _set_up_device(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    print(f"realtime: loading {args.model} on {args.device} ...", file=sys.stderr, flush=True)
    runtime = Runtime.load(args.model, args.device, DTYPES[args.dtype], offline=args.offline)

    def ready(url: str) -> None:
        print(f"realtime: serving; open {url}", flush=True)

    asyncio.run(serve(runtime, options, ready))
    return 0


def _check_listen(host: str, port: int) -> None:
    """Fail at once, not after the model has loaded, where the port is taken or the host is
    not this machine's."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _server_options(args: argparse.Namespace):
    """Checked before the model loads, so a wrong flag fails at once."""
    from realtime.server_config import LOCAL_HOSTS, ServerOptions
    from realtime.transports.options import CallOptions

    if args.host not in LOCAL_HOSTS and not args.token:
        raise ValueError(f"--host {args.host} is reachable beyond this machine: set --token")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.pdl and args.step_products == "auto":
        raise ValueError("--step-products auto times the step with and without --pdl itself")
    if args.twilio_auth_token and not args.public_url:
        raise ValueError("--twilio-auth-token needs --public-url: the URL Twilio signs")
    if args.public_url and not re.match(r"https?://[^/?#]+(/[^?#]*)?$", args.public_url):
        message = "expected http(s)://host[:port][/path], no query"
        raise ValueError(f"--public-url {args.public_url}: {message}")
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: no such file")
    if args.port:
        _check_listen(args.host, args.port)
    decoding = DecodingOptions(max_new_tokens=args.max_new_tokens)
    call = CallOptions(
        decoding=decoding, max_answer_ms=args.max_answer_ms, transcribe=args.transcribe
    )
    return ServerOptions(
        host=args.host,
        port=args.port,
        token=args.token,
        max_sessions=args.max_sessions,
        step_products=args.step_products,
        pdl=args.pdl,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        model_name=model_name(str(args.model)),
        twilio_auth_token=args.twilio_auth_token,
        public_url=args.public_url,
        call=call,
    )


def _call(args: argparse.Namespace) -> int:
    import asyncio

    from realtime.audio.io import load_audio, write_wav
    from realtime.transports.webrtc.caller import ENDINGS, LoopbackClient, SignalingError, call

    speech = load_audio(args.wav)
    settings = {"max_answer_ms": args.max_answer_ms} if args.max_answer_ms else None
    clients = []

    async def bounded():
        clients.append(LoopbackClient(args.url, args.token))  # (built inside the loop it uses)
        async with asyncio.timeout(args.timeout):
            return await call(args.url, speech, args.token, settings, clients[0])

    status = 0
    try:
        asyncio.run(bounded())
    except SignalingError as exc:
        raise ValueError(str(exc)) from None
    except TimeoutError:
        if not clients[0].of_type("response.started"):
            raise ValueError(f"no reply within {args.timeout:.0f} s") from None
        if any(clients[0].of_type(kind) for kind in ENDINGS):
            what = "the reply ended, but the transcript of what was said had not come"
        else:
            what = "the reply was still playing"
        print(
            f"realtime: {what} after {args.timeout:.0f} s; what came of it follows (--timeout"
            " waits longer, --max-answer-ms asks for a shorter reply)",
            file=sys.stderr,
        )
        status = 1
    except OSError as exc:  # aiohttp's connection errors among them
        raise ValueError(f"cannot reach {args.url}: {exc}") from None
    client = clients[0]
    for event in client.events:
        if event["type"] in (
            "speech.transcript.done",
            "turn.latency",
            "response.done",
            "response.interrupted",
            "error",
        ):
            print(json.dumps({k: v for k, v in event.items() if k != "_t"}))
    if args.out:
        write_wav(args.out, client.recording.audio(since=client.spoken))
    if args.json:
        args.json.write_text(json.dumps(client.events, indent=1) + "\n")
    return status
