"""The `realtime` command: `generate` one answer, `serve` live calls, `call` a server from a
script, `init-random` a test model directory; their options are in cli_args.py.

Bad input (a missing or unreadable file, an unknown task, a corrupt checkpoint, speech longer
than the model hears, a bad certificate, no server at a URL) exits with status 2 and one line
on stderr, never a traceback; the model's absence is found before anything loads.
A `call` that the server ends (or that hears no audio from it for 2 s) stops at once with
status 1, one line saying why, and what came of the call so far.
"""

import argparse
import json
import re
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from realtime.cli_args import EXIT_BAD_INPUT, build_parser
from realtime.decoding.options import DecodingOptions
from realtime.model import tokens
from realtime.model.checkpoint import DTYPES, ModelError, model_name
from realtime.model.config import PRESETS
from realtime.model.prompts import TASKS, Task


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `realtime`: what it can do, as a usage error
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    handlers = {"serve": _serve, "call": _call, "generate": _generate, "init-random": _init_random}
    try:
        return handlers[args.command](args)
    except (ModelError, ValueError) as exc:  # ours are one-line messages by construction
        print(f"realtime: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


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
    from realtime.model.checkpoint import resolve
    from realtime.server import serve

    _set_up_device(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    files = resolve(args.model, offline=args.offline)  # (a missing model: one line, no banner)
    print(f"realtime: loading {args.model} on {args.device} ...", file=sys.stderr, flush=True)
    runtime = Runtime(files, args.device, DTYPES[args.dtype])

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


def _check_tls(cert: Path, key: Path) -> None:
    """Load the pair now as the server will once the model is up, so a bad file fails at once
    and in words: "PEM lib" is all that ssl says of a file that is not PEM."""
    import ssl

    for option, path, what in (
        ("--tls-cert", cert, "CERTIFICATE"),
        ("--tls-key", key, "PRIVATE KEY"),
    ):
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"{option} {path}: {exc.strerror or exc}") from None
        if not re.search(rb"-----BEGIN [A-Z ]*" + what.encode() + b"-----", text):
            raise ValueError(f"{option} {path}: not a PEM {what.lower()}")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"--tls-key {key} is not the key of --tls-cert {cert}") from None
        raise ValueError(f"--tls-cert {cert}, --tls-key {key}: {exc.reason or exc}") from None


def _server_options(args: argparse.Namespace):
    """Checked before the model loads, so a wrong flag fails at once."""
    from realtime.server_config import LOCAL_HOSTS, ServerOptions
    from realtime.transports.options import CallOptions
    from realtime.turns.options import TurnOptions

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
    if args.tls_cert is not None:
        _check_tls(args.tls_cert, args.tls_key)
    if args.port:
        _check_listen(args.host, args.port)
    decoding = DecodingOptions(max_new_tokens=args.max_new_tokens)
    turns = TurnOptions(
        vad=args.vad,
        end_of_turn=args.end_of_turn,
        end_of_turn_ms=args.end_of_turn_ms,
        pause_ms=args.pause_ms,
        preempt=args.preempt,
    )
    call = CallOptions(
        turns=turns,
        decoding=decoding,
        max_answer_ms=args.max_answer_ms,
        transcribe=args.transcribe,
        history=args.history,
        history_positions=args.history_positions,
        idle_timeout_s=args.idle_timeout_s or None,
        max_session_s=args.max_session_s or None,
    )
    return ServerOptions(
        host=args.host,
        port=args.port,
        token=args.token,
        max_sessions=args.max_sessions,
        max_sessions_per_client=args.max_sessions_per_client,
        shutdown_grace_s=args.shutdown_grace_s,
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

    import aiohttp

    from realtime.audio.io import load_audio, write_wav
    from realtime.transports.webrtc.caller import (
        ENDINGS,
        LoopbackClient,
        ServerHungUp,
        SignalingError,
        call,
    )

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
    except ServerHungUp as exc:  # at once, not at --timeout: what came before it follows
        print(f"realtime: {exc}; what came of the call follows", file=sys.stderr)
        status = 1
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
    except (OSError, aiohttp.ClientError) as exc:  # refused, unknown host, not HTTP, ...
        reason = getattr(exc, "strerror", None) or exc
        raise ValueError(
            f"cannot reach {args.url}: {reason} (is `realtime serve` there?)"
        ) from None
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
        write_wav(args.out, client.recording.audio(since=client.spoken or 0.0))
    if args.json:
        args.json.write_text(json.dumps(client.events, indent=1) + "\n")
    return status
