"""The wire protocol between a client and the server, validated here and nowhere else.

Signaling is one HTTP request: POST /offer with {"type": "offer", "sdp": ...} (and the token as
`Authorization: Bearer T`), answered with {"type": "answer", "sdp": ..., "session": id}; any
failure is {"error": {"code", "message"}} with a 4xx/5xx status. After that, JSON messages flow
both ways on the data channel labelled DATA_CHANNEL_LABEL. client/PROTOCOL.md documents both.
"""

import json
import re
from dataclasses import dataclass

from realtime.turns.detector import AGGRESSIVENESS_LEVELS
from realtime.turns.options import END_OF_TURN, SPEECH_DETECTORS

DATA_CHANNEL_LABEL = "events"
MAX_MESSAGE_BYTES = 64 * 1024  # data channel messages and offer bodies: control, not bulk data
MIN_ANSWER_MS, MAX_ANSWER_MS = 200, 600_000


class ProtocolError(ValueError):
    """A client sent something we cannot take; `code` is stable, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def error(code: str, message: str) -> dict:
    return {"type": "error", "error": {"code": code, "message": message}}


# --- signaling ----------------------------------------------------------------------------------


def parse_offer(body: bytes) -> str:
    """The SDP of a POST /offer body; raises ProtocolError for anything but an audio offer."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"the offer is over {MAX_MESSAGE_BYTES} bytes")
    message = _json_object(body)
    if message.get("type") != "offer" or not isinstance(message.get("sdp"), str):
        raise ProtocolError("bad_offer", 'expected {"type": "offer", "sdp": "<SDP text>"}')
    sdp = message["sdp"]
    if not sdp.startswith("v=0"):
        raise ProtocolError("bad_sdp", "malformed SDP: it must start with v=0")
    audio = _media_section(sdp, "audio")
    if audio is None:
        raise ProtocolError("no_audio", "the offer has no audio m-line: send the microphone")
    if re.search(r"^a=(recvonly|inactive)\s*$", audio, re.MULTILINE) or audio.startswith(
        "m=audio 0 "
    ):
        raise ProtocolError("no_audio", "the offer's audio must be sendrecv: send the microphone")
    return sdp


def _media_section(sdp: str, kind: str) -> str | None:
    for section in re.split(r"\r?\n(?=m=)", sdp)[1:]:
        if section.startswith(f"m={kind} "):
            return section
    return None


def _json_object(raw: str | bytes) -> dict:
    try:
        message = json.loads(raw)
    except RecursionError:  # (nested deeper than the parser goes: json raises this, not ValueError)
        raise ProtocolError("bad_json", "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_json", "expected a JSON object")
    return message


# --- data channel: client -> server ------------------------------------------------------------


@dataclass(frozen=True)
class Interrupt:
    """Stop the answer now (the caller pressed the button)."""


@dataclass(frozen=True)
class Settings:
    """Fields left None keep their current value."""

    vad_aggressiveness: int | None = None
    max_answer_ms: int | None = None
    history: bool | None = None  # the conversation's earlier turns stay in context
    vad: str | None = None  # turns.options.SPEECH_DETECTORS
    end_of_turn: str | None = None  # turns.options.END_OF_TURN


ClientMessage = Interrupt | Settings


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Validate one data channel message; raises ProtocolError saying what is wrong."""
    if isinstance(raw, bytes):
        raise ProtocolError("bad_message", "messages are JSON text, not binary")
    if len(raw.encode()) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"messages are at most {MAX_MESSAGE_BYTES} bytes")
    message = _json_object(raw)
    kind = message.pop("type", None)
    if kind == "interrupt":
        _no_extra_fields(kind, message, set())
        return Interrupt()
    if kind == "settings":
        return _settings(message)
    raise ProtocolError("unknown_type", f"unknown message type {kind!r}: interrupt, settings")


def _settings(message: dict) -> Settings:
    fields = {"vad_aggressiveness", "max_answer_ms", "history", "vad", "end_of_turn"}
    _no_extra_fields("settings", message, fields)
    vad = message.get("vad_aggressiveness")
    if vad is not None and (not _is_int(vad) or vad not in AGGRESSIVENESS_LEVELS):
        raise ProtocolError("bad_value", f"vad_aggressiveness must be 0..3, got {vad!r}")
    limit = message.get("max_answer_ms")
    if limit is not None and (not _is_int(limit) or not MIN_ANSWER_MS <= limit <= MAX_ANSWER_MS):
        raise ProtocolError(
            "bad_value", f"max_answer_ms must be {MIN_ANSWER_MS}..{MAX_ANSWER_MS}, got {limit!r}"
        )
    history = message.get("history")
    if history is not None and not isinstance(history, bool):
        raise ProtocolError("bad_value", f"history must be true or false, got {history!r}")
    choices = {"vad": SPEECH_DETECTORS, "end_of_turn": END_OF_TURN}
    for name, allowed in choices.items():
        if message.get(name) is not None and message[name] not in allowed:
            raise ProtocolError(
                "bad_value", f"{name} must be one of {', '.join(allowed)}, got {message[name]!r}"
            )
    return Settings(
        vad_aggressiveness=vad,
        max_answer_ms=limit,
        history=history,
        vad=message.get("vad"),
        end_of_turn=message.get("end_of_turn"),
    )


def _no_extra_fields(kind: str, message: dict, allowed: set[str]) -> None:
    if extra := sorted(set(message) - allowed):
        raise ProtocolError("bad_field", f"{kind} takes no field {extra[0]!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- data channel: server -> client ------------------------------------------------------------


def message(kind: str, **fields) -> dict:
    """A server event; the kinds are listed in client/PROTOCOL.md."""
    return {"type": kind, **fields}
