"""The conversation an OpenAI-Realtime-compatible connection keeps: its items (the caller's
committed turns and the answers) and its responses, described as the protocol reports them."""

from dataclasses import dataclass, field

from realtime.engine import events
from realtime.model import tokens
from realtime.transports.openai.session import VOICE, Settings, output_audio
from realtime.transports.wire_audio import OutputAudio

CONTENT = {"output_index": 0, "content_index": 0}  # one item per response, one part per item


@dataclass
class Item:
    """One conversation item: a committed turn of the caller's, or an answer."""

    id: str
    role: str  # "user" or "assistant"
    status: str = "completed"
    samples: int = 0  # assistant: answer audio sent (24 kHz), or kept by a truncate
    text: str | None = None  # user: a typed message (else the turn was spoken)
    heard: str | None = None  # user: a spoken turn's transcript, once it is done
    spoken: bool = True  # assistant: speech with its transcript (else text only)
    texts: list[tuple[int, str]] = field(default_factory=list)  # (samples sent before it, text)
    # The engine turn whose part this item is in the model's context (history on), else None
    turn: int | None = None

    @property
    def audio_ms(self) -> int:
        """The answer's audio sent so far, in ms rounded up: clients count the part of a ms
        at the end as one (the openai-agents SDK truncates at most at its ceiling)."""
        return -(-self.samples * 1000 // tokens.OUTPUT_SAMPLE_RATE_HZ)

    @property
    def transcript(self) -> str:
        return "".join(text for _, text in self.texts)

    def truncate(self, audio_end_ms: int) -> None:
        """Keep the first audio_end_ms of the audio, and the text decoded before it was sent."""
        self.samples = min(self.samples, audio_end_ms * tokens.OUTPUT_SAMPLE_RATE_HZ // 1000)
        self.texts = [(at, text) for at, text in self.texts if at <= self.samples]

    def describe(self, ga: bool) -> dict:
        content: dict[str, str | None]
        if self.role == "user" and self.text is not None:
            content = {"type": "input_text", "text": self.text}
        elif self.role == "user":
            content = {"type": "input_audio", "transcript": self.heard}
        elif self.spoken:
            content = {"type": "output_audio" if ga else "audio", "transcript": self.transcript}
        else:
            content = {"type": "output_text" if ga else "text", "text": self.transcript}
        return {
            "id": self.id,
            "object": "realtime.item",
            "type": "message",
            "role": self.role,
            "status": self.status,
            "content": [content],
        }


@dataclass
class Response:
    """One answer: its item, its audio encoder, and the prompt length it was answered from."""

    id: str
    item: Item
    output: OutputAudio
    outside: bool = False  # it answers the response's instructions, not the conversation
    input_tokens: int = 0

    def describe(
        self,
        status: str,
        settings: Settings,
        ga: bool,
        details: dict | None = None,
        done: events.Done | None = None,
    ) -> dict:
        output = [] if status == "in_progress" else [self.item.describe(ga)]
        used = None if done is None else usage(self.input_tokens, done)
        return describe_response(
            self.id, status, settings, ga, self.item.spoken, details, output, used
        )


def describe_response(
    response_id: str,
    status: str,
    settings: Settings,
    ga: bool,
    spoken: bool,
    details: dict | None = None,
    output: list | None = None,
    used: dict | None = None,
) -> dict:
    """A response object as response.created / response.done carry it (no output: a response
    with nothing to answer)."""
    described = {
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "status_details": details,
        "output": output or [],
        "usage": used,
    }
    if ga:
        audio = {"output": output_audio(settings)}
        modalities = ["audio" if spoken else "text"]
        return described | {"output_modalities": modalities, "audio": audio}
    return described | {
        "modalities": ["text", "audio"] if spoken else ["text"],
        "voice": VOICE,
        "output_audio_format": settings.output_format,
    }


def usage(input_tokens: int, done: events.Done | None) -> dict:
    """Tokens as OpenAI counts them: the prompt's positions in, text ids and audio codes out
    (no Done: nothing out)."""
    text = 0 if done is None else len(done.text_tokens)
    audio = 0 if done is None else len(done.frames) * tokens.AUDIO_LAYERS
    return {
        "total_tokens": input_tokens + text + audio,
        "input_tokens": input_tokens,
        "output_tokens": text + audio,
        "input_token_details": {"cached_tokens": 0, "text_tokens": 0, "audio_tokens": input_tokens},
        "output_token_details": {"text_tokens": text, "audio_tokens": audio},
    }


def transcription_usage(done: events.TranscriptDone) -> dict:
    """A transcript's tokens: the turn's prompt in, its text ids out."""
    output = len(done.text_tokens)
    return {
        "type": "tokens",
        "input_tokens": done.positions,
        "output_tokens": output,
        "total_tokens": done.positions + output,
        "input_token_details": {"text_tokens": 0, "audio_tokens": done.positions},
    }
