"""A session's memory of the conversation: the earlier turns its KV rows hold, in order from
position 0, each kept as what was fed at its positions (the prompt's ids, the caller's audio
features, the answer's tokens as fed back). With that, any turn can be prefilled again at other
positions: when older turns leave to make room, when a door deletes one, or when an answer is
cut to what the caller heard. The cache's positions hold the first `valid` turns exactly; the
rest are prefilled again (session.py) before the next turn goes in after them.

The layout, turn after turn: [prompt_1 (ending in the answer markers)][answer_1 as fed back]
[prompt_2][answer_2]..., positions counted from 0, as one offline prefill of the same ids
would place them.
"""

from dataclasses import dataclass, field

import torch

from realtime.model.prompts import PROMPT_HEAD


@dataclass
class ContextTurn:
    """One earlier turn: `turn` is the engine's number for it (its events carry it)."""

    turn: int
    ids: torch.Tensor  # (rows, n, 8): every position fed, the prompt's then the answer's
    audio: torch.Tensor | None  # (frames, C) adapted features at PROMPT_HEAD.. of a spoken turn
    prompt_length: int  # positions of the prompt; the answer's follow

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    def audio_mask(self) -> torch.Tensor | None:
        """Which of its positions take audio features (None: none do)."""
        if self.audio is None:
            return None
        mask = torch.zeros(self.length, dtype=torch.bool)
        mask[PROMPT_HEAD : PROMPT_HEAD + self.audio.shape[0]] = True
        return mask


@dataclass
class Context:
    """The kept turns, oldest first, and how many of them the cache holds in place."""

    turns: list[ContextTurn] = field(default_factory=list)
    valid: int = 0  # the first `valid` turns are in the cache at their positions

    @property
    def positions(self) -> int:
        """The positions the kept turns take once all are in place."""
        return sum(t.length for t in self.turns)

    def start_of(self, index: int) -> int:
        return sum(t.length for t in self.turns[:index])

    def add(self, turn: ContextTurn, in_place: bool) -> None:
        """Keep `turn` after the others; `in_place`: it was computed at its positions, after
        every kept turn, and they were all in place."""
        self.turns.append(turn)
        if in_place and self.valid == len(self.turns) - 1:
            self.valid = len(self.turns)

    def clear(self) -> list[int]:
        """Forget every turn; the numbers of those that left."""
        gone = [t.turn for t in self.turns]
        self.turns.clear()
        self.valid = 0
        return gone

    def index(self, turn: int) -> int | None:
        return next((i for i, t in enumerate(self.turns) if t.turn == turn), None)

    def delete(self, turn: int) -> bool:
        """The turn leaves (a door deleted it); those after it move up."""
        i = self.index(turn)
        if i is None:
            return False
        del self.turns[i]
        self.valid = min(self.valid, i)
        return True

    def truncate(self, turn: int, answer_positions: int) -> bool:
        """Keep only the first `answer_positions` of the turn's answer (what was heard); those
        after it move up. Its own kept positions stay where they are; a turn left empty goes."""
        i = self.index(turn)
        if i is None:
            return False
        kept = self.turns[i]
        end = kept.prompt_length + max(0, answer_positions)
        if end < kept.length:
            kept.ids = kept.ids[:, :end]
            self.valid = min(self.valid, i + 1)
        if kept.length == 0:
            self.delete(turn)
        return True

    def drop_prompt(self, turn: int) -> bool:
        """The turn's prompt leaves and its answer stays (a door deleted the caller's part);
        it and those after it move up; a turn left empty goes."""
        i = self.index(turn)
        if i is None:
            return False
        kept = self.turns[i]
        if kept.prompt_length:
            kept.ids, kept.audio = kept.ids[:, kept.prompt_length :], None
            kept.prompt_length = 0
            self.valid = min(self.valid, i)
        if kept.length == 0:
            self.delete(turn)
        return True

    def make_room(self, needed: int, limit: int) -> list[int]:
        """Drop the oldest whole turns until the kept ones and `needed` more positions fit in
        `limit`; every kept turn then moves (positions from 0 again). The numbers of those that
        left."""
        gone: list[int] = []
        while self.turns and self.positions + needed > limit:
            gone.append(self.turns.pop(0).turn)
        if gone:
            self.valid = 0
        return gone
