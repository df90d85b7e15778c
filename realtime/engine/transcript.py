"""The caller's words: a spoken turn transcribed by Mini-Omni itself (its asr task), decoded in
the engine's batch beside the answer.

The asr prompt of a turn is the answer's up to its last position (the same audio features, the
same closing `_eoa` / `_eot`; then `_asr` where the answer has `_answer_t`). So at the end of a
turn the session copies its answer row's keys and values of every position but the last into a
spare cache row (a copy of a few MB, no model pass), and the transcript decodes like a text-only
answer whose prompt's last position is its first decode step: one more row in the batched
steps, greedy, until `_eot`. It joins the steps once the answer's first audio (or, for a text
answer, its first text) is out, so the end of the turn waits for nothing of it; the answer's
later steps carry its row while it runs. The caller may speak again at once: the next turn's
prefill writes only the answer's rows. A turn that ends while the row is still busy has its
transcript wait (the session's `transcripts_waiting`): its prompt stays in the answer row until
the caller's next turn is prefilled over it, which fails it if it has not started by then.
"""

import time
from collections.abc import Callable

import torch

from realtime.decoding.generate import Generation, StepOutput
from realtime.decoding.options import DecodingOptions
from realtime.engine import events
from realtime.model.prompts import Task
from realtime.model.tokenizer import IncrementalDetokenizer

# A transcript's length limit: speech runs at well under 5 tokens a second, so 10 a second of
# audio (feature frames are 20 ms) plus a margin stops a model that never says `_eot`.
TOKENS_PER_FRAME = 1 / 5
MIN_TOKENS = 16
GREEDY = DecodingOptions(top_k=1)  # what the reference's asr task runs


def max_tokens(frames: int) -> int:
    return MIN_TOKENS + int(frames * TOKENS_PER_FRAME)


class Transcript:
    """One turn's transcript as it decodes, from its prompt's last position (`last_position`,
    (1, 8) ids) on: the rest of the prompt is in its cache row. The engine steps it as it steps
    a session's answer: it offers the same face to the batch (`gen`, `generation`, `slots`,
    `slot_ids`, `decoding`, `accept`, `finish`, `fail`)."""

    decoding = GREEDY

    def __init__(
        self,
        sid: int,
        turn: int,
        slot: int,
        device,
        prompt_length: int,
        last_position: torch.Tensor,
        limit: int,
        tokenizer,
        sink: Callable[[events.Event], None],
    ) -> None:
        self.sid, self.turn, self.sink, self.tokenizer = sid, turn, sink, tokenizer
        self.slot_ids = [slot]
        self.slots = torch.tensor([slot], device=device)
        self.gen: Generation | None = Generation(
            Task.ASR, prompt_length, limit, first_input=last_position
        )
        self.detok = IncrementalDetokenizer(tokenizer)

    @property
    def generating(self) -> bool:
        return self.gen is not None and not self.gen.done

    @property
    def generation(self) -> Generation:
        """`gen`, from its start until it finishes or fails."""
        if self.gen is None:
            raise RuntimeError(f"session {self.sid}: turn {self.turn}'s transcript is over")
        return self.gen

    def accept(self, text_token: int, audio: list[int] | None) -> StepOutput:
        out = self.generation.accept(text_token, None)
        if out.text_token is not None and (delta := self.detok.push(out.text_token)):
            self._emit(events.TranscriptDelta, text=delta)
        return out

    def finish(self, tail_pcm=None) -> None:
        """The transcript ended (at `_eot`, or at its length limit)."""
        if tail := self.detok.flush():
            self._emit(events.TranscriptDelta, text=tail)
        gen, self.gen = self.generation, None
        ids = gen.text_tokens()
        self._emit(
            events.TranscriptDone,
            reason=gen.stop_reason,
            text=self.tokenizer.decode(ids).strip(),
            text_tokens=ids,
            positions=gen.prompt_length,
        )

    def fail(self, message: str) -> None:
        """It cannot go on (a failed step, or the next turn needs its row): say so, and leave
        the batch."""
        if self.gen is not None:
            self.gen = None
            self._emit(events.TranscriptFailed, message=message)

    def _emit(self, kind, **fields) -> None:
        self.sink(kind(self.sid, time.monotonic(), self.turn, **fields))
