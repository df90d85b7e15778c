"""The session of an OpenAI-Realtime-compatible connection: what a client may set with
`session.update` (in either generation's shape), what we report back, and what we refuse.

Two generations of the protocol are in use (spec/protocols.md): "beta" (the header
`OpenAI-Beta: realtime=v1`; flat `input_audio_format`, `turn_detection`, `modalities`) and "GA"
(nested `audio.input` / `audio.output`, `output_modalities`, renamed output events). Updates in
either shape are read; the session is reported, and events named, in the connection's own.

Answers are speech with its transcript, or text only (`modalities` / `output_modalities`
["text"]: the model's text-out twin of the turn). Input transcription (`input_audio_transcription`
/ `audio.input.transcription`) is Mini-Omni's own asr task, whatever model the client names.
What Mini-Omni cannot use is accepted, kept and reported back, never an error, because the
frameworks built on this protocol send it by default and some end the session on any error:
`instructions`, `tools` and `tool_choice` (the model takes no system prompt and calls no
tools), a transcription's `prompt` and `language` (it transcribes English), noise reduction,
`semantic_vad` (server_vad runs in its place, its create/interrupt flags kept). `apply_update`
names them so the server can log them. Invalid values (an unknown format, a threshold of 7)
reject the whole update. The voice (the model's one), temperature and answer length are the
server's, whatever a client asks; the session reports the voice and the length limit as they
are.
"""

import base64
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from realtime.model import tokens
from realtime.transports.wire_audio import FORMATS
from realtime.turns.detector import AGGRESSIVENESS_LEVELS, VAD_FRAME_MS
from realtime.turns.options import TurnOptions

VOICE = "mini-omni"  # the model's one voice
SILERO_THRESHOLD_RANGE = (0.05, 0.95)  # server_vad's threshold, as Silero takes it
MAX_SILENCE_MS = 10_000
MAX_PREFIX_PADDING_MS = 2_000
GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
# semantic_vad's eagerness -> (Smart Turn's P(complete) that ends a turn at a pause, the silence
# that ends one it judged unfinished). OpenAI's limits for an unfinished turn are 8, 4 and 2 s;
# auto is medium.
EAGERNESS = {"low": (0.7, 8000), "medium": (0.5, 4000), "high": (0.3, 2000), "auto": (0.5, 4000)}


@dataclass(frozen=True)
class EventNames:
    """The server events whose names differ between the protocol's generations."""

    item_added: str
    item_done: str | None  # the beta protocol has no such event
    audio_delta: str
    audio_done: str
    transcript_delta: str
    transcript_done: str
    text_delta: str
    text_done: str


BETA_NAMES = EventNames(
    item_added="conversation.item.created",
    item_done=None,
    audio_delta="response.audio.delta",
    audio_done="response.audio.done",
    transcript_delta="response.audio_transcript.delta",
    transcript_done="response.audio_transcript.done",
    text_delta="response.text.delta",
    text_done="response.text.done",
)
GA_NAMES = EventNames(
    item_added="conversation.item.added",
    item_done="conversation.item.done",
    audio_delta="response.output_audio.delta",
    audio_done="response.output_audio.done",
    transcript_delta="response.output_audio_transcript.delta",
    transcript_done="response.output_audio_transcript.done",
    text_delta="response.output_text.delta",
    text_done="response.output_text.done",
)


class ClientError(ValueError):
    """One client event we cannot take: becomes an `error` event for that client only."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


@dataclass(frozen=True)
class ServerVad:
    """OpenAI's server_vad settings, carried out by turns.TurnDetector (webrtcvad): the turn
    ends after `silence_duration_ms` of silence (its answer begins early, at a pause)."""

    type: ClassVar[str] = "server_vad"

    # 0..1: Silero's P(speech) threshold (within SILERO_THRESHOLD_RANGE), or webrtcvad's
    # aggressiveness 0..3 in four equal steps
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True

    def turn_options(self, base: TurnOptions) -> TurnOptions:
        level = min(max(AGGRESSIVENESS_LEVELS), int(self.threshold * len(AGGRESSIVENESS_LEVELS)))
        return replace(
            base,
            aggressiveness=level,
            speech_threshold=min(
                max(self.threshold, SILERO_THRESHOLD_RANGE[0]), SILERO_THRESHOLD_RANGE[1]
            ),
            preroll_ms=self.prefix_padding_ms,
            end_of_turn_ms=self.silence_duration_ms,
        )


@dataclass(frozen=True)
class SemanticVad:
    """OpenAI's semantic_vad: Smart Turn v3 (turns.smart_turn) judges each pause in the caller's
    speech; `eagerness` sets how sure it must be that the turn is complete, and how long a
    turn it judged unfinished may stay silent (EAGERNESS)."""

    type: ClassVar[str] = "semantic_vad"
    eagerness: str = "auto"
    create_response: bool = True
    interrupt_response: bool = True

    def turn_options(self, base: TurnOptions) -> TurnOptions:
        threshold, unfinished_ms = EAGERNESS[self.eagerness]
        return replace(
            base,
            end_of_turn="smart-turn",
            complete_threshold=threshold,
            incomplete_ms=unfinished_ms,
        )


TurnDetection = ServerVad | SemanticVad


@dataclass(frozen=True)
class Settings:
    input_format: str = "pcm16"
    output_format: str = "pcm16"
    turn_detection: TurnDetection | None = ServerVad()
    speak: bool = True  # answers are speech with its transcript; False: text only
    transcribe: bool = False  # the caller's spoken turns are transcribed (the model's asr task)
    # Ours, not OpenAI's: the conversation's items are the model's context (else each turn is
    # answered alone, as the model was trained)
    history: bool = False
    # Kept and reported as the client set them; the model uses none of them.
    instructions: str = ""
    tools: tuple = ()
    tool_choice: object = "auto"
    noise_reduction: object = None  # (the audio is heard as it comes)


def apply_update(settings: Settings, session: object) -> tuple[Settings, list[str]]:
    """A `session.update`'s session (either shape) applied: the new settings and the fields it
    set that the model does not use (kept and reported all the same). Raises ClientError if any
    value is invalid."""
    if not isinstance(session, dict):
        raise ClientError("invalid_value", "session must be an object", "session")
    ga = session.get("type") == "realtime" or "audio" in session or "output_modalities" in session
    audio = _object(session.get("audio"), "session.audio")
    inputs = _object(audio.get("input"), "session.audio.input")
    outputs = _object(audio.get("output"), "session.audio.output")
    formats = _formats(settings, session, inputs, outputs)
    speak = speaks(session, "session")
    kept = _kept(session)
    history = session.get("history")
    if history is not None and not isinstance(history, bool):
        raise ClientError("invalid_type", "history must be true or false", "session.history")
    if history is not None:
        kept["history"] = history
    heard, unused = _input_settings(session, inputs, ga)
    updated = replace(
        settings,
        input_format=formats["input_format"],
        output_format=formats["output_format"],
        speak=settings.speak if speak is None else speak,
        **kept,
        **heard,
    )
    return updated, unused_fields(session, "session") + unused


def _input_settings(session: dict, inputs: dict, ga: bool) -> tuple[dict[str, Any], list[str]]:
    """Transcription, turn detection and noise reduction after an update (GA's in
    `audio.input`, beta's flat), checked; and what of them the model does not use."""
    if ga:
        where, prefix = inputs, "session.audio.input."
        transcription, noise = "transcription", "noise_reduction"
    else:
        where, prefix = session, "session."
        transcription, noise = "input_audio_transcription", "input_audio_noise_reduction"
    heard: dict[str, Any] = {}
    unused = []
    if transcription in where:  # an object turns it on (what it says is a hint), null off
        hint = _object(where[transcription], prefix + transcription)
        heard["transcribe"] = where[transcription] is not None
        if hint.get("prompt"):
            unused.append(f"{prefix}{transcription}.prompt")
        if str(hint.get("language") or "en").split("-")[0] != "en":
            unused.append(f"{prefix}{transcription}.language")  # (it transcribes English)
    if "turn_detection" in where:
        detection = where["turn_detection"]
        heard["turn_detection"] = _vad(detection, prefix + "turn_detection")
    if noise in where:
        heard["noise_reduction"] = _object(where[noise], prefix + noise) or None
        if heard["noise_reduction"] is not None:
            unused.append(prefix + noise)
    return heard, unused


def _kept(session: dict) -> dict[str, Any]:
    """The instructions, tools and tool choice an update sets, checked: kept, not used."""
    kept: dict[str, Any] = {}
    if session.get("instructions") is not None:
        if not isinstance(session["instructions"], str):
            message = "instructions must be a string"
            raise ClientError("invalid_type", message, "session.instructions")
        kept["instructions"] = session["instructions"]
    if session.get("tools") is not None:
        tools = session["tools"]
        if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
            raise ClientError("invalid_type", "tools must be a list of objects", "session.tools")
        kept["tools"] = tuple(tools)
    if session.get("tool_choice") is not None:
        kept["tool_choice"] = session["tool_choice"]
    return kept


def _formats(settings: Settings, session: dict, inputs: dict, outputs: dict) -> dict[str, str]:
    """The input and output formats after an update (in either shape), checked."""
    formats = {"input_format": settings.input_format, "output_format": settings.output_format}
    for field, value, param in (
        ("input_format", session.get("input_audio_format"), "input_audio_format"),
        ("output_format", session.get("output_audio_format"), "output_audio_format"),
        ("input_format", inputs.get("format"), "audio.input.format"),
        ("output_format", outputs.get("format"), "audio.output.format"),
    ):
        if value is not None:
            formats[field] = _format(value, "session." + param)
    return formats


def unused_fields(request: dict, where: str) -> list[str]:
    """The fields of a session (or a response.create's response) that Mini-Omni cannot use:
    the model takes no system prompt and calls no tools."""
    return [f"{where}.{name}" for name in ("instructions", "tools") if request.get(name)]


def speaks(request: dict, where: str) -> bool | None:
    """Whether a session (or a response.create's response) asks for speech, by its
    `modalities` or `output_modalities` (["audio"], ["text", "audio"] or ["text"]); None if it
    says nothing of it."""
    speak = None
    for param in ("modalities", "output_modalities"):
        modalities = request.get(param)
        if modalities is None:
            continue
        if (
            not isinstance(modalities, list)
            or not modalities
            or any(m not in ("text", "audio") for m in modalities)
        ):
            message = 'modalities are ["audio"] (speech and its transcript) or ["text"]'
            raise ClientError("invalid_value", message, f"{where}.{param}")
        speak = "audio" in modalities
    return speak


def decode_base64(value: object, param: str) -> bytes:
    if not isinstance(value, str):
        raise ClientError("invalid_value", f"{param} must be a base64 string", param)
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or (a plain ValueError) a character outside ASCII
        raise ClientError("invalid_value", f"{param} is not valid base64", param) from None


def _object(value: object, param: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClientError("invalid_value", f"{param} must be an object", param)
    return value


def _format(value: object, param: str) -> str:
    """`pcm16` / `g711_ulaw` / `g711_alaw`, or GA's {"type": "audio/pcm", "rate": 24000} etc."""
    if isinstance(value, dict):
        kind = value.get("type")
        name = GA_FORMATS.get(kind) if isinstance(kind, str) else None  # (no type: no format)
        if name is not None and value.get("rate", FORMATS[name].rate_hz) == FORMATS[name].rate_hz:
            return name
    elif isinstance(value, str) and value in FORMATS:
        return value
    known = ", ".join([*FORMATS, *(f'{{"type": "{t}"}}' for t in GA_FORMATS)])
    raise ClientError("invalid_value", f"unknown audio format {value!r}; known: {known}", param)


def _vad(value: object, param: str) -> TurnDetection | None:
    if value is None:
        return None
    value = _object(value, param)
    kind = value.get("type", "server_vad")
    flags = {"create_response": (bool, None, None), "interrupt_response": (bool, None, None)}
    if kind == "semantic_vad":
        eagerness = value.get("eagerness")
        if eagerness is not None and (not isinstance(eagerness, str) or eagerness not in EAGERNESS):
            message = f"eagerness must be one of {', '.join(EAGERNESS)}"
            raise ClientError("invalid_value", message, f"{param}.eagerness")
        semantic = SemanticVad(eagerness=eagerness or "auto")
        return _fields(semantic, value, flags, param)
    if kind != "server_vad":
        raise ClientError("invalid_value", f"unknown turn detection {kind!r}", param)
    fields = {
        "threshold": (float, 0.0, 1.0),
        "prefix_padding_ms": (int, 0, MAX_PREFIX_PADDING_MS),
        "silence_duration_ms": (int, VAD_FRAME_MS, MAX_SILENCE_MS),
        **flags,
    }
    return _fields(ServerVad(), value, fields, param)


def _fields(vad, value: dict, fields: dict, param: str):
    """`vad` with the `fields` (name: (type, low, high)) that `value` gives, checked."""
    for name, (cast, low, high) in fields.items():
        if value.get(name) is None:
            continue
        given = value[name]
        if cast is bool and not isinstance(given, bool):
            raise ClientError("invalid_value", f"{name} must be true or false", f"{param}.{name}")
        number = isinstance(given, int | float) and not isinstance(given, bool)
        if cast is not bool and not (number and low <= given <= high):
            message = f"{name} must be a number from {low} to {high}"
            raise ClientError("invalid_value", message, f"{param}.{name}")
        vad = replace(vad, **{name: cast(given)})
    return vad


def describe(
    settings: Settings, sid: str, model: str, ga: bool, max_steps: int | None = None
) -> dict:
    """The session object of session.created / session.updated, in the connection's shape.
    `max_steps`: the server's limit on an answer's decode steps (None: none)."""
    vad = settings.turn_detection
    detection = None if vad is None else {"type": vad.type, **vad.__dict__}
    # a step decodes one token in each stream (text + 7 audio layers)
    limit = "inf" if max_steps is None else max_steps * tokens.STREAMS
    common: dict[str, object] = {
        "id": sid,
        "object": "realtime.session",
        "model": model,
        "instructions": settings.instructions,
        "tools": list(settings.tools),
        "tool_choice": settings.tool_choice,
        "max_output_tokens": limit,
    }
    if settings.history:  # (ours: reported while it is on, beside OpenAI's fields)
        common["history"] = True
    transcription = {"model": model} if settings.transcribe else None  # (its asr task)
    if not ga:
        common["max_response_output_tokens"] = common.pop("max_output_tokens")
        return common | {
            "modalities": ["text", "audio"] if settings.speak else ["text"],
            "voice": VOICE,
            "input_audio_format": settings.input_format,
            "output_audio_format": settings.output_format,
            "input_audio_transcription": transcription,
            "input_audio_noise_reduction": settings.noise_reduction,
            "turn_detection": detection,
        }
    return common | {
        "type": "realtime",
        "output_modalities": ["audio" if settings.speak else "text"],
        "audio": {
            "input": {
                "format": _ga_format(settings.input_format),
                "transcription": transcription,
                "noise_reduction": settings.noise_reduction,
                "turn_detection": detection,
            },
            "output": output_audio(settings),
        },
    }


def output_audio(settings: Settings) -> dict:
    """GA's description of the answers' audio."""
    return {"format": _ga_format(settings.output_format), "voice": VOICE}


def _ga_format(name: str) -> dict:
    kind = next(t for t, n in GA_FORMATS.items() if n == name)
    return {"type": kind, "rate": FORMATS[name].rate_hz} if name == "pcm16" else {"type": kind}
