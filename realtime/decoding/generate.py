"""Delayed-parallel decoding: one text token and seven audio tokens per step.

Audio layer i runs i + 1 steps behind the text, so frame f of speech is complete once layer 6
has spoken at step f + 7. `Generation` is the per-request state machine (what to feed back,
when to stop, which frame just completed); it never touches the model, so one inference loop can
drive many of them through one batched step. `generate_tokens` is the single-request loop.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from realtime.decoding.options import DecodingOptions
from realtime.decoding.sampling import is_greedy, sample
from realtime.model import tokens
from realtime.model.lm import KVCache, OmniLM
from realtime.model.prompts import TASKS, Prompt, Task


@dataclass
class StepOutput:
    text_token: int | None = None  # a new token of the answer's text
    frame: list[int] | None = None  # a completed frame of 7 SNAC codes (delay removed)
    done: bool = False


@dataclass
class Generation:
    """One request's decoding state. Mirrors the reference's rules exactly:

    - speech-out tasks stop when audio layer 6 emits _eoa; after the text emits _eot every later
      text token is forced to _pad_t;
    - text-out tasks stop when the text emits _eot;
    - the token sampled from the prompt itself (step 0) is kept without these checks;
    - at most `max_steps` tokens per stream.
    """

    task: Task
    prompt_length: int
    max_steps: int
    text: list[int] = field(default_factory=list)  # text stream as fed back, one id per step
    audio: list[list[int]] = field(default_factory=list)  # 7 layer-local ids per step
    text_ended: bool = False
    stop_reason: str | None = None
    # The prompt's last position (rows, 8), when it runs as the first decode step rather than
    # in the prompt's forward pass (a transcript's: realtime.engine.transcript); step 0 is sampled
    # from it. Text-out tasks only: the kernels' feedback takes each decode step as a later one.
    first_input: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.first_input is not None and self.spec.audio_out:
            raise ValueError(f"a {self.task} request's first step is sampled from its prompt")

    @property
    def spec(self):
        return TASKS[self.task]

    @property
    def steps(self) -> int:
        return len(self.text)

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    @property
    def needs_text_logits(self) -> bool:
        return not self.text_ended  # once _eot is out the text is forced

    @property
    def next_position(self) -> int:
        return self.prompt_length + self.steps - 1

    def accept(self, text_token: int, audio_tokens: list[int] | None) -> StepOutput:
        """Take one step's sampled ids (audio ones layer-local) and apply the stop rules."""
        first = self.steps == 0
        if self.spec.audio_out:
            assert audio_tokens is not None  # a speaking request samples audio every step
            if not first:
                if self.text_ended:
                    text_token = tokens.PAD_T
                if audio_tokens[-1] == tokens.EOA:
                    return self._stop("end of audio")
                self.text_ended |= text_token == tokens.EOT
            self.audio.append(list(audio_tokens))
        elif not first and text_token == tokens.EOT:
            return self._stop("end of text")
        self.text.append(text_token)
        out = StepOutput(text_token=self._answer_token(text_token), frame=self._new_frame())
        if self.steps >= self.max_steps:
            self._stop("length")
        out.done = self.done
        return out

    def next_input(self) -> torch.Tensor:
        """(rows, 8) ids to feed at `next_position`: the last step's tokens, audio layer-shifted
        (rows that do not speak feed _pad_a); before step 0, `first_input`."""
        if self.steps == 0:
            if self.first_input is None:
                raise ValueError("step 0 is sampled from the prompt's forward pass")
            return self.first_input
        return self._input_of(self.steps - 1)

    def fed(self, count: int) -> torch.Tensor:
        """(rows, count, 8): the ids fed back at the `count` positions after the prompt (steps
        0 .. count-1's tokens; the last step's are never fed), as a conversation's memory
        keeps the answer."""
        if not 0 <= count <= max(self.steps - 1, 0):
            raise ValueError(f"{count} positions asked of an answer that fed {self.steps - 1}")
        inputs = [self._input_of(step) for step in range(count)]
        if not inputs:
            return torch.zeros(self.spec.rows, 0, tokens.STREAMS, dtype=torch.long)
        return torch.stack(inputs, dim=1)

    def _input_of(self, step: int) -> torch.Tensor:
        pad = [tokens.layer_shift(tokens.PAD_A, i) for i in range(tokens.AUDIO_LAYERS)]
        spoken = pad
        if self.spec.audio_out:
            spoken = [tokens.layer_shift(a, i) for i, a in enumerate(self.audio[step])]
        rows = [
            spoken if r == self.spec.audio_row and self.spec.audio_out else pad
            for r in range(self.spec.rows)
        ]
        return torch.tensor([row + [self.text[step]] for row in rows], dtype=torch.long)

    def text_tokens(self) -> list[int]:
        """The answer's text ids: speech tasks cut at the first _eot (as the reference does);
        text tasks stop on _eot, so only a step-0 _eot can be in the stream."""
        if self.spec.audio_out:
            return (
                self.text[: self.text.index(tokens.EOT)] if tokens.EOT in self.text else self.text
            )
        return [t for t in self.text if t != tokens.EOT]

    def frames(self) -> list[list[int]]:
        """All completed frames, each 7 codes (layer i's code from step f + i + 1)."""
        count = max(0, len(self.audio) - tokens.MAX_AUDIO_DELAY)
        return [self._frame(f) for f in range(count)]

    def _frame(self, f: int) -> list[int]:
        return [self.audio[f + tokens.audio_delay(i)][i] for i in range(tokens.AUDIO_LAYERS)]

    def _new_frame(self) -> list[int] | None:
        f = len(self.audio) - 1 - tokens.MAX_AUDIO_DELAY
        return self._frame(f) if self.spec.audio_out and f >= 0 and self.audio else None

    def _answer_token(self, text_token: int) -> int | None:
        if self.spec.audio_out:
            return None if tokens.EOT in self.text else text_token
        return None if text_token == tokens.EOT else text_token

    def _stop(self, reason: str) -> StepOutput:
        self.stop_reason = reason
        return StepOutput(done=True)


@dataclass
class StepRow:
    """One request in a batched step: its decoding state, its cache rows, how it samples."""

    gen: Generation
    slots: list[int]
    options: DecodingOptions

    @property
    def greedy(self) -> bool:
        return is_greedy(self.options)


def sample_step(
    model: OmniLM,
    hidden: torch.Tensor,
    gen: Generation,
    opts: DecodingOptions,
) -> tuple[int, list[int] | None]:
    """Sample one request's text and audio ids from its rows' hidden states (rows, C), at its
    next position."""
    spec, position = gen.spec, gen.next_position
    text = tokens.PAD_T
    if gen.needs_text_logits:
        logits = model.text_logits(hidden[spec.text_row : spec.text_row + 1])[0]  # (V,)
        text = int(sample(logits, opts, position, tokens.TEXT_STREAM))
    audio = None
    if spec.audio_out:
        logits = model.audio_logits(hidden[spec.audio_row : spec.audio_row + 1])[0]  # (7, V)
        audio = sample(logits, opts, position, 0).tolist()
    return text, audio


@dataclass
class PrefillInput:
    prompt: Prompt
    audio: torch.Tensor | None = None  # (T_audio, C) adapted whisper features, or None


def prefill(model: OmniLM, cache: KVCache, slots: torch.Tensor, inp: PrefillInput, prompts=None):
    """Run the whole prompt for its rows (cache rows `slots`); hidden of the last position.
    `prompts`: a realtime.decoding.gpu.prompt_graphs.PromptGraphs over `cache` to run it on, or
    None."""
    ids = inp.prompt.ids.to(cache.k.device)  # (rows, T, 8)
    rows, length = ids.shape[:2]
    positions = torch.arange(length, device=ids.device).expand(rows, -1)
    audio, mask = None, None
    if inp.audio is not None:
        audio, mask = place_features(inp.audio, rows, length)
    x = model.embed(ids, audio, mask)
    if prompts is not None:
        return prompts.forward(x, positions, slots, start=0)[:, -1]
    return model(x, positions, slots, cache)[:, -1]  # (rows, C)


def place_features(audio: torch.Tensor, rows: int, length: int):
    """Put T_audio adapted frames at prompt positions 1..T_audio: (rows, length, C) + mask."""
    frames = audio.shape[0]
    placed = audio.new_zeros(rows, length, audio.shape[-1])
    placed[:, 1 : 1 + frames] = audio
    mask = torch.zeros(rows, length, dtype=torch.bool, device=audio.device)
    mask[:, 1 : 1 + frames] = True
    return placed, mask


def decode_step(
    model: OmniLM, cache: KVCache, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """One token for each of B rows: ids (B, 8) at positions (B,) -> hidden (B, C)."""
    x = model.embed(ids[:, None])  # (B, 1, C)
    return model(x, positions[:, None], slots, cache)[:, 0]


def generate_tokens(
    model: OmniLM,
    cache: KVCache,
    inp: PrefillInput,
    task: Task,
    opts: DecodingOptions,
    decoder=None,
) -> Iterator[tuple[Generation, StepOutput]]:
    """Decode one request in cache rows 0..rows-1, yielding after every step. `decoder`: a
    realtime.decoding.gpu.decoder.KernelDecoder to run the steps on, or None for the torch path."""
    prompt = inp.prompt
    room = cache.max_seq - prompt.length
    if room < 1:
        raise ValueError(
            f"prompt of {prompt.length} positions leaves no room in the "
            f"{cache.max_seq}-position context"
        )
    gen = Generation(task, prompt.length, min(opts.max_new_tokens or room, room))
    rows = prompt.ids.shape[0]
    slots = torch.arange(rows, device=cache.k.device)
    if decoder is not None:
        request = [StepRow(gen, list(range(rows)), opts)]
    with torch.inference_mode():
        prompts = None if decoder is None else decoder.prompts
        hidden = prefill(model, cache, slots, inp, prompts)
        out = gen.accept(*sample_step(model, hidden, gen, opts))
        yield gen, out
        while not out.done:
            if decoder is None:
                positions = torch.full_like(slots, gen.next_position)
                ids = gen.next_input().to(slots.device)
                hidden = decode_step(model, cache, ids, positions, slots)
                chosen = sample_step(model, hidden, gen, opts)
            else:
                chosen = decoder.decode(request)[0]
            out = gen.accept(*chosen)
            yield gen, out
