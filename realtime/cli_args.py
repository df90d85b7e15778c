"""The `realtime` command's arguments: each command's options, their help and defaults, and
the checks argparse runs on them (a bad one is a usage error: one line, status 2)."""

import argparse
import os
import tomllib
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

from realtime.decoding.options import ENCODER_MODES, STEP_PRODUCT_CHOICES, DecodingOptions
from realtime.model.checkpoint import DEFAULT_MODEL, DTYPES, TRY_A_MODEL
from realtime.model.config import PRESETS
from realtime.model.prompts import Task
from realtime.turns.options import END_OF_TURN, SPEECH_DETECTORS, TurnOptions

EXIT_BAD_INPUT = 2
DESCRIPTION = """\
A low-latency, full-duplex voice agent server for the Mini-Omni speech models: `realtime serve`
talks live with browsers (WebRTC), phones (Twilio) and OpenAI Realtime clients; the other
commands answer once, script a call, or write a random model to try things with."""
FIRST_RUN = f"""\
a first run, without downloading the model (a random one: it babbles):
  realtime init-random /tmp/tiny --preset tiny
  realtime serve --model /tmp/tiny --offline      (then open http://127.0.0.1:8080)
without --model, serve and generate use {DEFAULT_MODEL}, downloaded on first use"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, and shows defaults in its help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Appends an option's default to its help, unless the help already says it or there is
    none to show (an unset value, a flag); descriptions keep their line breaks."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        unset = action.default is None or action.default is False
        if unset or action.default == argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (default: %(default)s)" if action.option_strings else text

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            # argparse measures the commands at the section's indent but prints them one
            # further in, so the longest one's help would wrap to the next line
            self._action_max_length += self._indent_increment


def version() -> str:
    """The installed package's version; a checkout's pyproject.toml where it is not installed."""
    try:
        return metadata.version("realtime")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="realtime", description=DESCRIPTION, epilog=FIRST_RUN)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", parser_class=_Parser
    )
    for name, add, summary in (
        ("serve", _add_serve, "talk with the model live: browsers, phones, OpenAI clients"),
        ("call", _add_call, "speak an audio file into a running server, record the reply"),
        ("generate", _add_generate, "answer one utterance or text, to files"),
        ("init-random", _add_init_random, "write a model directory with random weights"),
    ):
        description = f"{summary[0].upper()}{summary[1:]}."
        add(commands.add_parser(name, help=summary, description=description))
    return parser


def _add_generate(p: argparse.ArgumentParser) -> None:
    _add_model_options(p)
    io = p.add_argument_group("input and output")
    io.add_argument(
        "--task",
        required=True,
        choices=[t.value for t in Task],
        help="a2a: speech in, speech and text out; a2t, t2a, t2t, asr; a2a-batch: the reference's",
    )
    source = io.add_mutually_exclusive_group(required=True)
    source.add_argument("--input-wav", type=Path, metavar="FILE", help="speech (any format, rate)")
    source.add_argument("--input-text", metavar="TEXT", help="text, for the t2* tasks")
    io.add_argument("--output-wav", type=Path, metavar="FILE", help="write the speech (24 kHz)")
    io.add_argument("--json", type=Path, metavar="FILE", help="write tokens, text and timings")
    decoding = p.add_argument_group("decoding")
    defaults = DecodingOptions()
    decoding.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        metavar="N",
        help="stop after N steps (default: at the model's end of answer)",
    )
    decoding.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        metavar="T",
        help="applied after --top-k",
    )
    decoding.add_argument(
        "--top-k",
        type=_positive_int,
        default=defaults.top_k,
        metavar="K",
        help="1 is greedy, like the reference",
    )
    decoding.add_argument(
        "--top-p",
        type=float,
        default=defaults.top_p,
        metavar="P",
        help="nucleus sampling, after --temperature",
    )
    decoding.add_argument("--seed", type=int, default=defaults.seed, help="for sampled decoding")
    decoding.add_argument(
        "--encoder",
        choices=ENCODER_MODES,
        default="exact",
        help="exact: the reference's 30 s encoding; chunked: 2 s blocks, as serve streams them",
    )


def _add_init_random(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", type=Path, help="where to write it (made if missing)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tiny",
        help="tiny: two narrow layers, fast on a CPU (tests, trying things); "
        "mini-omni: the released shapes (speed figures)",
    )
    p.add_argument("--seed", type=int, default=0, help="of the random weights")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="DIR_OR_HUB_NAME",
        help=f"a model directory or a Hugging Face hub name; {TRY_A_MODEL}",
    )
    g.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: cuda where torch sees a CUDA GPU, else cpu; cuda: the first GPU it sees, "
        "CUDA_VISIBLE_DEVICES=N picks GPU N",
    )
    g.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bfloat16",
        help="of the language model's weights; float32 gives the reference's tokens exactly",
    )
    g.add_argument(
        "--offline", action="store_true", help="never download; use the directory and the caches"
    )
    g.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="CPU threads for torch and our CPU kernels (default: one per core); fewer "
        "keeps decoding steady when other processes share the cores",
    )


def _add_serve(p: argparse.ArgumentParser) -> None:
    _add_model_options(p)
    listen = p.add_argument_group("listening")
    listen.add_argument(
        "--host", default="127.0.0.1", help="an address beyond this machine needs --token"
    )
    listen.add_argument("--port", type=_port, default=8080, help="0 picks a free one")
    listen.add_argument(
        "--token",
        metavar="T",
        help="callers must present it (the page reads it from the URL's #token=T)",
    )
    listen.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PEM",
        help="serve HTTPS (a phone's browser gives its mic only to HTTPS pages)",
    )
    listen.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's key")
    listen.add_argument(
        "--max-sessions",
        type=_positive_int,
        default=4,
        metavar="N",
        help="concurrent calls; one more is refused as busy",
    )
    limits = p.add_argument_group("limits on each call (0: none)")
    limits.add_argument(
        "--idle-timeout-s",
        type=_seconds,
        default=300,
        metavar="S",
        help="end a call in which nothing is said, sent or answered this long",
    )
    limits.add_argument(
        "--max-session-s",
        type=_seconds,
        default=3600,
        metavar="S",
        help="end any call this long",
    )
    limits.add_argument(
        "--max-sessions-per-client",
        type=_count,
        metavar="N",
        help="calls one client address may hold (default: no cap with --token or for "
        "this machine; else half of --max-sessions, for clients through a proxy here)",
    )
    limits.add_argument(
        "--shutdown-grace-s",
        type=_seconds,
        default=10,
        metavar="S",
        help="on SIGTERM, how long answers in progress may go on before every call closes",
    )
    answers = p.add_argument_group("answers")
    answers.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        metavar="N",
        help="steps per answer (default: until the model ends it)",
    )
    answers.add_argument(
        "--max-answer-ms",
        type=_positive_int,
        metavar="MS",
        help="speech per answer (default: no limit); callers may lower it",
    )
    answers.add_argument(
        "--transcribe",
        action="store_true",
        help="show browser callers their own words (the model's asr, one more "
        "row in the decode step while it runs)",
    )
    answers.add_argument(
        "--history",
        action="store_true",
        help="remember the conversation: earlier turns stay in the model's context (callers "
        "may switch it; the model was trained on single turns)",
    )
    answers.add_argument(
        "--history-positions",
        type=_positive_int,
        metavar="N",
        help="the most context earlier turns may take, the oldest leaving first (50 positions "
        "a second of the caller's speech, about 12 of an answer's; default: all that leave "
        "room for the next turn)",
    )
    turns = p.add_argument_group("turn-taking (docs/turns.md)")
    turns.add_argument(
        "--vad",
        choices=SPEECH_DETECTORS,
        default=TurnOptions.vad,
        help="what hears the caller's speech start (and a barge-in): webrtcvad, or Silero VAD "
        "(fewer false starts in noise and music, about 30 ms later)",
    )
    turns.add_argument(
        "--end-of-turn",
        choices=END_OF_TURN,
        default=TurnOptions.end_of_turn,
        help="what ends a turn: a silence (--end-of-turn-ms), or Smart Turn v3 judging each "
        "pause (complete: at once; else after 2 s of silence)",
    )
    turns.add_argument(
        "--end-of-turn-ms",
        type=_positive_int,
        default=TurnOptions.end_of_turn_ms,
        metavar="MS",
        help="the silence that ends a turn (the hangover)",
    )
    turns.add_argument(
        "--pause-ms",
        type=_positive_int,
        default=TurnOptions.pause_ms,
        metavar="MS",
        help="the silence after which the answer begins early, unheard until the turn is over "
        "(and Smart Turn judges the turn)",
    )
    turns.add_argument(
        "--no-preempt",
        dest="preempt",
        action="store_false",
        help="begin answers only once the turn is over",
    )
    gpu = p.add_argument_group("the GPU decode step (docs/kernels.md)")
    gpu.add_argument(
        "--step-products",
        choices=STEP_PRODUCT_CHOICES,
        default="cublas",
        help="its matrix products: cuBLAS's; ours with the norms and SwiGLU fused "
        "in; or auto: per batch size, whichever is faster, with or without --pdl "
        "(timed at start)",
    )
    gpu.add_argument(
        "--pdl",
        action="store_true",
        help="launch its kernels as programmatic dependents, each starting while "
        "the one before finishes (H100 and later)",
    )
    phone = p.add_argument_group("phone calls through Twilio (docs/twilio.md)")
    phone.add_argument(
        "--twilio-auth-token",
        default=os.environ.get("TWILIO_AUTH_TOKEN"),
        metavar="A",
        help="the account's auth token, to check Twilio's request "
        "signatures (default: $TWILIO_AUTH_TOKEN); needs --public-url",
    )
    phone.add_argument(
        "--public-url",
        metavar="URL",
        help="this server's URL as Twilio reaches it (https://host, e.g. a "
        "tunnel's): Twilio signs it, the media stream's URL is built on it",
    )


def _add_call(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", type=_http_url, help="the server, e.g. http://127.0.0.1:8080")
    p.add_argument(
        "--wav", type=Path, required=True, metavar="FILE", help="what to say (any audio file)"
    )
    p.add_argument("--out", type=Path, metavar="FILE", help="write the spoken reply (24 kHz WAV)")
    p.add_argument(
        "--json", type=Path, metavar="FILE", help="write every event with its arrival time"
    )
    p.add_argument("--token", metavar="T", help="the server's --token")
    p.add_argument(
        "--max-answer-ms",
        type=_positive_int,
        metavar="MS",
        help="ask for a reply at most this long (a random model's never ends)",
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="seconds to wait for the reply"
    )


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


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1e9:  # (NaN fails too)
        raise argparse.ArgumentTypeError(f"expected seconds, 0 or more, got {text}")
    return value
