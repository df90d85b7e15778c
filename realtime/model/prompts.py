"""The tasks Mini-Omni was trained on, and the 8-stream prompt each one starts from."""

from dataclasses import dataclass
from enum import StrEnum

import torch

from realtime.model import tokens


class Task(StrEnum):
    A2A = "a2a"  # speech in, text + speech out
    A2T = "a2t"  # speech in, text out
    T2A = "t2a"  # text in, text + speech out
    T2T = "t2t"  # text in, text out
    ASR = "asr"  # speech in, its transcript out
    A2A_BATCH = "a2a-batch"  # the reference server's mode: an a2a row speaks, an a2t row thinks


@dataclass(frozen=True)
class TaskSpec:
    audio_in: bool
    audio_out: bool
    rows: int  # prompt rows decoded together
    text_row: int  # row whose text logits choose the text token
    audio_row: int  # row whose audio logits choose the audio tokens


TASKS: dict[Task, TaskSpec] = {
    Task.A2A: TaskSpec(audio_in=True, audio_out=True, rows=1, text_row=0, audio_row=0),
    Task.A2T: TaskSpec(audio_in=True, audio_out=False, rows=1, text_row=0, audio_row=0),
    Task.T2A: TaskSpec(audio_in=False, audio_out=True, rows=1, text_row=0, audio_row=0),
    Task.T2T: TaskSpec(audio_in=False, audio_out=False, rows=1, text_row=0, audio_row=0),
    Task.ASR: TaskSpec(audio_in=True, audio_out=False, rows=1, text_row=0, audio_row=0),
    Task.A2A_BATCH: TaskSpec(audio_in=True, audio_out=True, rows=2, text_row=1, audio_row=0),
}

# Prompt positions around the user's input: one opening marker, then after the input the
# end marker and the answer marker.
PROMPT_HEAD = 1
PROMPT_TAIL = 2


@dataclass(frozen=True)
class Prompt:
    ids: torch.Tensor  # (rows, T, 8) shared-table ids, audio layers already shifted
    audio_frames: int  # whisper features go to positions 1..audio_frames (0 for text input)

    @property
    def length(self) -> int:
        return self.ids.shape[1]


def _audio_streams(body: list[int], layer: int) -> list[int]:
    return [tokens.layer_shift(token, layer) for token in body]


def _stack(audio_bodies: list[list[int]], text: list[int]) -> torch.Tensor:
    """7 layer-local audio id lists + 1 text id list -> (T, 8) shared-table ids."""
    streams = [_audio_streams(audio_bodies[layer], layer) for layer in range(tokens.AUDIO_LAYERS)]
    return torch.tensor([*streams, text], dtype=torch.long).T


def audio_prompt_row(frames: int, answer_audio: bool, text_end: int) -> torch.Tensor:
    """(T, 8) ids for speech input of `frames` feature frames.

    Audio streams: _input_a, _pad_a x frames, _eoa, then _answer_a (speak) or _pad_a (don't).
    Text stream: _input_t, _pad_t x frames, _eot, then `text_end` (_answer_t, or _asr).
    """
    last_a = tokens.ANSWER_A if answer_audio else tokens.PAD_A
    audio = [tokens.INPUT_A] + [tokens.PAD_A] * frames + [tokens.EOA, last_a]
    text = [tokens.INPUT_T] + [tokens.PAD_T] * frames + [tokens.EOT, text_end]
    return _stack([audio] * tokens.AUDIO_LAYERS, text)


def text_prompt_row(text_ids: list[int], answer_audio: bool) -> torch.Tensor:
    """(T, 8) ids for text input: _input_t, the text, _eot, _answer_t; audio streams padded
    (ending in _answer_a when the answer is spoken)."""
    text = [tokens.INPUT_T, *text_ids, tokens.EOT, tokens.ANSWER_T]
    if answer_audio:
        audio = [tokens.PAD_A] * (len(text) - 1) + [tokens.ANSWER_A]
    else:
        audio = [tokens.PAD_A] * len(text)
    return _stack([audio] * tokens.AUDIO_LAYERS, text)


def build_prompt(task: Task, *, audio_frames: int = 0, text_ids: list[int] | None = None) -> Prompt:
    """The prompt rows for `task`: speech tasks take `audio_frames`, text tasks `text_ids`."""
    if task is Task.A2A:
        rows = [audio_prompt_row(audio_frames, True, tokens.ANSWER_T)]
    elif task is Task.A2T:
        rows = [audio_prompt_row(audio_frames, False, tokens.ANSWER_T)]
    elif task is Task.ASR:
        rows = [audio_prompt_row(audio_frames, False, tokens.ASR)]
    elif task is Task.A2A_BATCH:
        rows = [
            audio_prompt_row(audio_frames, True, tokens.ANSWER_T),
            audio_prompt_row(audio_frames, False, tokens.ANSWER_T),
        ]
    else:
        rows = [text_prompt_row(text_ids or [], task is Task.T2A)]
        audio_frames = 0
    return Prompt(ids=torch.stack(rows), audio_frames=audio_frames)
