"""One live conversation inside the engine: its turn's encoding and prefill, its decoding state
and its output streams. Lives on the inference thread only; the engine drives it.

A turn goes: audio arrives -> the chunked encoder emits 2 s blocks -> each block is prefilled
into this session's KV rows at once (the caller is still talking) -> at the end of the turn only
the last partial block and the two closing prompt positions remain -> step 0 is sampled and the
session joins the engine's batched decode.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from realtime.audio.encoder import ChunkedEncoder, encode_exact
from realtime.audio.vocoder import VocoderStream
from realtime.decoding.generate import Generation, StepOutput, sample_step
from realtime.decoding.options import ENCODER_MODES, DecodingOptions
from realtime.decoding.sampling import check_decoding
from realtime.engine import events
from realtime.engine.context import Context, ContextTurn
from realtime.engine.transcript import Transcript, max_tokens
from realtime.model import tokens
from realtime.model.lm import KVCache, OmniLM
from realtime.model.prompts import PROMPT_HEAD, PROMPT_TAIL, TASKS, Task, build_prompt
from realtime.model.tokenizer import IncrementalDetokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionOptions:
    """Per-conversation choices (the model's dimensions and the server's limits live elsewhere)."""

    task: Task = Task.A2A
    encoder: str = "chunked"  # "exact" waits for the end of the turn, as the reference does
    # Earlier turns stay in context (realtime.engine.context): the oldest leave first when a
    # new turn and its answer would not fit, or when they take more than `history_positions`.
    keep_history: bool = False
    history_positions: int | None = None
    # Transcribe spoken turns (realtime.engine.transcript) on a cache row of the session's own; a
    # turn may also ask for it or not (end_turn's `transcribe`) when this is set.
    transcribe: bool = False
    decoding: DecodingOptions = field(default_factory=DecodingOptions)


# A speech task's twin for a typed turn: the same prompt rows and outputs, text in.
TEXT_TWINS = {Task.A2A: Task.T2A, Task.A2T: Task.T2T}
# A speaking task's silent twin: the same rows and the same prompt up to its last position (the
# answer marker of the audio streams), so a turn prefilled for one can be answered as the other.
SILENT_TWINS = {Task.A2A: Task.A2T, Task.T2A: Task.T2T}


def turn_task(task: Task, speak: bool | None) -> Task:
    """`task` for a turn answered aloud (speak True), in text only (False), or as the session's
    task says (None)."""
    if speak is None or TASKS[task].audio_out == speak:
        return task
    twins = SILENT_TWINS if not speak else {b: a for a, b in SILENT_TWINS.items()}
    if task not in twins:
        raise SessionError(f"task {task} cannot answer {'aloud' if speak else 'in text only'}")
    return twins[task]


# When earlier turns must leave, a quarter of the context more than needed is freed: every
# kept turn then moves and is prefilled again (seconds for a full context on a CPU), so this
# happens once in several turns, not at every turn once the context is full.
ROOM_TO_SPARE = 4


def heard(played_frames: int) -> int:
    """The answer positions a caller who heard `played_frames` frames heard: frame f takes
    the tokens of steps f .. f + 7 (the audio layers' delays); none for nothing heard."""
    return played_frames + tokens.MAX_AUDIO_DELAY if played_frames > 0 else 0


class SessionError(ValueError):
    """Something this session asked for cannot be done; it ends the turn, not the engine."""


@dataclass
class Early:
    """An answer begun at a pause in the caller's speech, before the turn is known to be over
    (end_turn's `tentative`): it decodes until its first audio (or text) is ready, then waits;
    its events are held until the turn is confirmed, and dropped if the caller goes on."""

    speak: bool | None
    transcribe: bool
    length: int  # its prompt's positions, earlier turns included
    frames: int  # the turn's feature frames up to the pause
    held: list[events.Event] = field(default_factory=list)


def check_options(options: SessionOptions) -> None:
    if options.encoder not in ENCODER_MODES:
        raise SessionError(f"unknown encoder mode {options.encoder!r}: {ENCODER_MODES}")
    if options.task not in TASKS:
        raise SessionError(f"unknown task {options.task!r}")
    spec = TASKS[options.task]
    if options.transcribe and not (spec.audio_in and spec.rows == 1):
        raise SessionError(f"task {options.task} cannot transcribe: a2a and a2t can")
    try:
        check_decoding(options.decoding)
    except ValueError as exc:
        raise SessionError(str(exc)) from None


def cache_rows(options: SessionOptions) -> int:
    """The KV rows a session of `options` holds: its task's, and one to transcribe on."""
    return TASKS[options.task].rows + options.transcribe


class Session:
    def __init__(
        self,
        sid: int,
        slots: list[int],
        options: SessionOptions,
        sink: Callable[[events.Event], None],
        lm: OmniLM,
        cache: KVCache,
        whisper,
        tokenizer,
        prompts=None,
    ) -> None:
        """`prompts`: a realtime.decoding.gpu.prompt_graphs.PromptGraphs over `cache` to prefill on,
        or None."""
        check_options(options)
        self.sid, self.options, self.sink = sid, options, sink
        self.turn = 0  # answers asked for so far (end_turn, start_text); events carry it
        self.spec = TASKS[options.task]
        if len(slots) != cache_rows(options):
            raise SessionError(f"a session of {options} needs {cache_rows(options)} rows")
        self.lm, self.cache, self.whisper, self.tokenizer = lm, cache, whisper, tokenizer
        self.prompts = prompts
        rows = self.spec.rows  # the answer's rows; a spare one after them transcribes
        self.slot_ids = list(slots[:rows])  # the host's copy: reading the tensor back would sync
        self.slots = torch.tensor(self.slot_ids, device=cache.k.device)
        self.transcript_slot = slots[rows] if options.transcribe else None
        self.transcript: Transcript | None = None  # the last spoken turn's
        # Turns whose transcript waits for the row (turn, prompt length, feature frames): the
        # answer row holds their prompt until the next turn's prefill writes over it.
        self.transcripts_waiting: list[tuple[int, int, int]] = []
        self.encoder = ChunkedEncoder(whisper) if options.encoder == "chunked" else None
        self.vocoder = VocoderStream(device=cache.k.device)
        self.keep_history = options.keep_history  # (a door may switch it: set_history)
        self.context = Context()  # the earlier turns the answer rows hold (keep_history)
        # This turn's prompt ids (rows, n, 8) and audio features, for its place in the context
        self._prompt: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.discarding = False  # a turn failed midway: drop its audio until its end
        self.early: Early | None = None  # an answer begun at a pause, held (end_turn)
        self._cancel_through = 0  # answers up to this turn were cancelled before they began
        self.discarded_steps = 0  # decode steps of early answers dropped, not yet counted
        # The last spoken turn answered, and its samples (a false end of turn rejoins them)
        self._answered: tuple[int, list[np.ndarray]] = (0, [])
        self._reset_input()
        self._reset_answer()

    # --- turn input -----------------------------------------------------------------------

    def _reset_input(self) -> None:
        """Forget the caller's current turn (its audio, features and prefill progress)."""
        self.audio: list[np.ndarray] = []  # the turn's samples (exact mode encodes them whole)
        self.features: list[torch.Tensor] = []  # adapted frames of this turn, (n, C) each
        self.samples = 0  # audio samples heard this turn
        self.frames = 0  # feature frames so far
        self.prefilled = 0  # prompt positions of this turn already in the KV cache
        self.base = 0  # where this turn's prompt starts; set when its prefill begins
        if self.encoder is not None:
            self.encoder.reset()

    def _reset_answer(self) -> None:
        self.gen: Generation | None = None
        self.detok = IncrementalDetokenizer(self.tokenizer)
        self.vocoder.reset()
        self._held: list[np.ndarray] | None = []  # first audio held back (emit_audio)
        self.marks: dict[type, float] = {}

    @property
    def generating(self) -> bool:
        return self.gen is not None and not self.gen.done

    @property
    def generation(self) -> Generation:
        """`gen`, from the answer's step 0 until it finishes, is cancelled or fails."""
        if self.gen is None:
            raise RuntimeError(f"session {self.sid}: no answer is being decoded")
        return self.gen

    @property
    def decoding(self) -> DecodingOptions:
        return self.options.decoding

    def lanes(self) -> list:
        """What of this session decodes in the batch: its answer, and its transcript once the
        answer's first output is out (before that, its row would slow the steps the end of
        the turn waits on); either may be done: the engine finishes those. A transcript that
        waited for the row starts here, once the one before it is over."""
        if self.early is not None and self._answer_is_out():
            return []  # ready to play the moment the turn is confirmed: it waits there
        if self.transcripts_waiting and (self.transcript is None or self.transcript.gen is None):
            self._start_transcript(*self.transcripts_waiting.pop(0))
        if self.transcript is None or not self._answer_is_out():
            return [self]
        return [self, self.transcript]

    def _answer_is_out(self) -> bool:
        if not self.generating:
            return True
        first = events.FirstAudio if self.generation.spec.audio_out else events.FirstText
        return first in self.marks

    def feed_audio(self, samples: np.ndarray) -> None:
        """16 kHz mono samples of the caller's turn; prefill whatever blocks they complete."""
        if not self.spec.audio_in:
            raise SessionError(f"task {self.options.task} takes text, not audio")
        if self.discarding:
            return
        self.samples += len(samples)
        self.audio.append(samples)
        if self.encoder is None:
            return
        self._add_features(self.encoder.push(samples))
        if not self.generating:  # a running answer owns the KV rows until it ends
            self._prefill_features()

    def clear_input(self) -> None:
        """Drop a half-heard turn (and an answer begun early on it)."""
        self.resume_turn()
        self._reset_input()

    def end_turn(
        self, speak: bool | None = None, transcribe: bool | None = None, tentative: bool = False
    ) -> None:
        """The caller stopped talking: finish the prompt and sample the answer's first step,
        spoken or in text only as `speak` says (None: as the session's task does); transcribe
        the turn too as `transcribe` says (None: as the session's options do).

        A turn that ends while an answer still runs supersedes it (the caller spoke over it).
        A transcript asked for always ends in TranscriptDone or TranscriptFailed, the latter
        also when the turn fails before the transcript begins.

        `tentative`: the caller has only paused; the answer begins (Early) but nothing of it
        is sent until an end_turn confirms it, and resume_turn drops it as if the pause never
        happened. A tentative end while an answer runs, or of a turn with no speech, is
        ignored: its confirmation answers as a plain end_turn does.
        """
        if transcribe is None:
            transcribe = self.options.transcribe
        if self.early is not None:
            if tentative:
                return
            if (self.early.speak, self.early.transcribe) == (speak, transcribe):
                self._confirm()
                return
            self.resume_turn()  # asked for another kind of answer: it begins again
        if tentative:
            self._answer_early(speak, transcribe)
            return
        self.turn += 1
        try:
            self._answer_turn(speak, transcribe)
            self._cancel_if_asked()
        finally:
            begun = self.transcript is not None and self.transcript.turn == self.turn
            begun = begun or any(turn == self.turn for turn, _, _ in self.transcripts_waiting)
            if transcribe and not begun:
                message = "the turn failed before its transcript began"
                self._emit(events.TranscriptFailed, message=message)

    def _answer_turn(self, speak: bool | None, transcribe: bool) -> None:
        if self.discarding:  # this turn already failed
            self.discarding = False
            return
        self._emit(events.TurnEnded)
        if self.generating:
            self.cancel()
        task = turn_task(self.options.task, speak)
        if transcribe and self.transcript_slot is None:
            raise SessionError("this session has no row to transcribe on (transcribe=False)")
        if self.samples == 0:
            raise SessionError("the turn ended before any speech arrived")
        if self.encoder is not None:
            self._add_features(self.encoder.flush())
        else:
            audio = np.concatenate(self.audio or [np.zeros(0)])  # the whole utterance
            self._add_features(encode_exact(self.whisper, audio))
        context = self.context
        moved = context.valid < len(context.turns) or self.base != context.positions
        if self.prefilled and moved:
            self.prefilled = 0  # the context changed under this turn: both go in again
        try:
            self._prefill_features()
            prompt = build_prompt(task, audio_frames=self.frames).ids
            features = torch.cat(self.features)
            self._finish_prompt(prompt[:, self.prefilled :], task)
            self._prompt = (prompt, features)
            if transcribe:
                self._transcribe(self.base + self.prefilled, self.frames)
        finally:
            self._answered = (self.turn, self.audio)
            self._reset_input()  # the next turn starts from fresh input state

    def _answer_early(self, speak: bool | None, transcribe: bool) -> None:
        """Begin the answer from the turn so far, leaving the turn open: its last partial
        block is encoded by a peek, prefilled past the positions the turn holds, and the input
        state is put back as it was (the caller's next words prefill over those positions)."""
        if self.generating or self.discarding or self.samples == 0 or not self.spec.audio_in:
            return
        task = turn_task(self.options.task, speak)
        if transcribe and self.transcript_slot is None:
            return  # (its confirmation fails as a plain end of turn would)
        context = self.context
        if self.prefilled and (
            context.valid < len(context.turns) or self.base != context.positions
        ):
            self.prefilled = 0  # the context changed under this turn: both go in again
        kept = (list(self.features), self.frames, self.prefilled, self.base)
        self.early = Early(speak, transcribe, 0, 0)
        self.turn += 1
        self._emit(events.TurnEnded)
        try:
            if self.encoder is not None:
                self._add_features(self.encoder.peek())
            else:
                audio = np.concatenate(self.audio)  # the whole utterance so far
                self._add_features(encode_exact(self.whisper, audio))
            self._prefill_features()
            prompt = build_prompt(task, audio_frames=self.frames).ids
            self._finish_prompt(prompt[:, self.prefilled :], task)
            self._prompt = (prompt, torch.cat(self.features))
            self.early.length, self.early.frames = self.base + self.prefilled, self.frames
        except Exception as exc:  # the end of the turn answers it the usual way (and fails
            self.resume_turn()  # there, with an Error, if it must)
            log.warning("session %d: an early answer failed: %r", self.sid, exc)
        finally:
            moved = self.base != kept[3]  # earlier turns left: this turn goes in again
            self.features, self.frames = kept[0], kept[1]
            self.prefilled = 0 if moved else kept[2]

    def _confirm(self) -> None:
        """The turn is over: the early answer's events go out, and those to come follow."""
        early, self.early = self.early, None
        assert early is not None
        if early.transcribe:
            self._transcribe(early.length, early.frames)
        self._answered = (self.turn, self.audio)
        self._reset_input()  # (what was heard after the pause is not part of the turn)
        for event in early.held:
            self.sink(event)
        self._cancel_if_asked()

    def _cancel_if_asked(self) -> None:
        """A cancel that came before this turn's end reached the session stops its answer."""
        if self.turn <= self._cancel_through and self.generating:
            self.cancel()

    def rejoin_turn(self) -> None:
        """The caller went on just after their turn ended (a false end of turn): the turn
        answered last comes back as the start of the one being heard, its answer (which the
        owner cancels first, as for a barge-in) leaves the context, and the next end of turn
        answers both as one. Nothing happens if a turn came between."""
        turn, audio = self._answered
        if turn != self.turn or not audio:
            return
        self.resume_turn()
        if self.generating:
            self.cancel()
        self.context.delete(turn)
        current, self._answered = self.audio, (0, [])
        self._reset_input()
        for samples in [*audio, *current]:
            self.feed_audio(samples)

    def resume_turn(self) -> None:
        """The caller goes on after a tentative end of turn: its answer and events are dropped
        (its steps counted in `discarded_steps`), and the turn continues as if the pause had
        not ended anything. Nothing happens without an early answer."""
        if self.early is None:
            return
        self.discarded_steps += self.gen.steps if self.gen is not None else 0
        self.early = None
        self.turn -= 1
        self._prompt = None
        self._reset_answer()
        self._prefill_features()  # the blocks heard meanwhile

    def start_text(self, text: str, speak: bool | None = None) -> None:
        """A text turn: prefill it whole and sample the answer's first step (`speak` as for
        end_turn). A speech session answers it as its task's text twin (a2a as t2a, a2t as
        t2t: the same rows and outputs), dropping a half-heard spoken turn."""
        task = TEXT_TWINS.get(self.options.task) if self.spec.audio_in else self.options.task
        if task is None:
            raise SessionError(f"task {self.options.task} takes audio, not text")
        self.resume_turn()  # the typed turn goes in place of any half-heard one
        self.turn += 1
        task = turn_task(task, speak)
        prompt = build_prompt(task, text_ids=self.tokenizer.encode(text).ids)
        self._emit(events.TurnEnded)
        if self.generating:
            self.cancel()
        self._reset_input()  # the typed turn goes in place of any half-heard one
        self._begin_prefill()
        self._ensure_room(prompt.length)
        self._finish_prompt(prompt.ids, task)
        self._prompt = (prompt.ids, None)
        self._reset_input()
        self._cancel_if_asked()

    def _transcribe(self, length: int, frames: int) -> None:
        """Transcribe the turn just prefilled (its answer's prompt takes `length` positions,
        earlier turns included; its audio `frames`): at once if the row is free, else once
        the transcript on it is over (lanes), as long as the answer row keeps this turn's
        prompt (_forward fails it when the next turn's prefill writes over it)."""
        if self.transcript is not None and self.transcript.gen is not None:
            self.transcripts_waiting.append((self.turn, length, frames))
            return
        self._start_transcript(self.turn, length, frames)

    def _start_transcript(self, turn: int, length: int, frames: int) -> None:
        """Its asr prompt is the answer's but for the last position, so the answer row's cache
        up to there is copied, not computed, and that position is its first decode step
        (realtime.engine.transcript)."""
        src, dst = self.slot_ids[self.spec.audio_row], self.transcript_slot
        assert dst is not None  # _answer_turn refuses a transcript without its row
        for kv in (self.cache.k, self.cache.v):
            kv[:, dst, :, : length - 1] = kv[:, src, :, : length - 1]
        last = build_prompt(Task.ASR, audio_frames=frames).ids[:, -1]  # (1, 8)
        limit = min(max_tokens(frames), self.cache.max_seq - length)
        self.transcript = Transcript(
            self.sid, turn, dst, self.slots.device, length, last, limit, self.tokenizer, self.sink
        )

    def _drop_overwritten_transcripts(self, start: int) -> None:
        """The answer rows are written from position `start` on: the waiting transcripts whose
        prompt reaches past it can no longer start."""
        for waiting in [w for w in self.transcripts_waiting if w[1] - 1 > start]:
            self.transcripts_waiting.remove(waiting)
            message = "the next turn began before the transcript row was free"
            self.sink(events.TranscriptFailed(self.sid, time.monotonic(), waiting[0], message))

    def _add_features(self, features: torch.Tensor) -> None:
        if features.shape[0]:
            self.features.append(self.lm.adapt(features))
            self.frames += features.shape[0]

    def _prefill_features(self) -> None:
        """Prefill the features not yet in the cache (with the prompt's opening position)."""
        self._begin_prefill()
        self._ensure_room(PROMPT_HEAD + self.frames + PROMPT_TAIL)
        done = max(self.prefilled - PROMPT_HEAD, 0)
        if self.frames == done:
            return
        new = torch.cat(self.features)[done:]  # (n, C)
        ids = build_prompt(self.options.task, audio_frames=self.frames).ids
        ids = ids[:, self.prefilled : PROMPT_HEAD + self.frames]
        audio = torch.cat([new.new_zeros(ids.shape[1] - len(new), new.shape[1]), new])
        mask = torch.zeros(ids.shape[1], dtype=torch.bool, device=new.device)
        mask[ids.shape[1] - len(new) :] = True
        self._forward(ids, audio[None].expand(self.spec.rows, -1, -1), mask)

    def _finish_prompt(self, ids: torch.Tensor, task: Task | None = None) -> None:
        """Prefill the closing positions (rows, n, 8) and sample step 0 of `task`'s answer
        (None: the session's)."""
        hidden = self._forward(ids, None, None)[:, -1]
        self._emit(events.PrefillDone, positions=self.base + self.prefilled)
        length = self.base + self.prefilled
        room = self.cache.max_seq - length
        limit = self.options.decoding.max_new_tokens or room
        self.gen = Generation(task or self.options.task, length, min(limit, room))
        self.accept(*sample_step(self.lm, hidden, self.gen, self.options.decoding))

    def _forward(self, ids, audio, mask) -> torch.Tensor:
        """Run prompt positions ids (rows, n, 8) of this turn through the model."""
        hidden = self._forward_at(self.base + self.prefilled, ids, audio, mask)
        self.prefilled += ids.shape[1]
        return hidden

    def _forward_at(self, start: int, ids, audio, mask) -> torch.Tensor:
        """Run ids (rows, n, 8) at positions start.. through the model, into the answer rows."""
        if self.transcripts_waiting:
            self._drop_overwritten_transcripts(start)
        ids = ids.to(self.slots.device)
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        x = self.lm.embed(ids, audio, None if mask is None else mask.expand(ids.shape[0], -1))
        positions = positions.expand(ids.shape[0], -1)
        if self.prompts is not None:
            return self.prompts.forward(x, positions, self.slots, start)
        return self.lm(x, positions, self.slots, self.cache)

    def _begin_prefill(self) -> None:
        """Place a new turn: after the earlier turns, once they are all in the cache where they
        belong (those that moved are prefilled again), or at 0 without them."""
        if self.prefilled == 0:  # earlier turns are settled by now
            self._refill_context()
            self.base = self.context.positions

    def _refill_context(self) -> None:
        context = self.context
        start = context.start_of(context.valid)
        for turn in context.turns[context.valid :]:
            mask = turn.audio_mask()
            audio = None
            if turn.audio is not None and mask is not None:
                audio = turn.audio.new_zeros(turn.length, turn.audio.shape[1])
                audio[mask] = turn.audio
                audio = audio[None].expand(self.spec.rows, -1, -1)
                mask = mask.to(turn.audio.device)
            self._forward_at(start, turn.ids, audio, mask)
            start += turn.length
        context.valid = len(context.turns)

    def _ensure_room(self, turn_positions: int) -> None:
        """Leave room for the turn and its answer: earlier turns give way, the oldest first,
        where they must (and a quarter of the context more); a turn alone too long for the
        model fails."""
        limit = self.cache.max_seq
        needed = turn_positions + (self.options.decoding.max_new_tokens or limit // 4)
        if self.context.turns and self.context.positions + needed > limit:
            gone = self.context.make_room(needed + limit // ROOM_TO_SPARE, limit)
            if gone:
                self._emit(events.Forgotten, turns=tuple(gone), positions=self.context.positions)
                self.prefilled = 0  # this turn moves too: prefilled again after the kept ones
                self._begin_prefill()
        if self.base + turn_positions >= limit:
            raise SessionError(
                f"the turn needs {turn_positions} positions; the model's context holds {limit}"
            )

    def _remember(self, answer_positions: int) -> None:
        """Keep the turn just answered (its first `answer_positions` fed back) in the context."""
        prompt, self._prompt = self._prompt, None
        if not self.keep_history or prompt is None or self.gen is None:
            return
        ids, audio = prompt
        answer = self.gen.fed(answer_positions).to(ids.device)
        turn = ContextTurn(self.turn, torch.cat([ids, answer], dim=1), audio, ids.shape[1])
        # computed in place if its prompt went in right after every kept turn
        start = self.gen.prompt_length - ids.shape[1]
        self.context.add(turn, in_place=start == self.context.positions)
        limit = self.options.history_positions
        if limit is not None and self.context.positions > limit:
            gone = self.context.make_room(limit // ROOM_TO_SPARE, limit)
            if gone:
                self._emit(events.Forgotten, turns=tuple(gone), positions=self.context.positions)

    # --- the conversation's memory (a door's edits) ---------------------------------------

    def set_history(self, keep: bool) -> None:
        """Keep earlier turns from now on, or forget them all."""
        self.resume_turn()  # an early answer read the context as it was: it begins again
        self.keep_history = keep
        if not keep:
            self.context.clear()

    def forget(self, turn: int, prompt: bool = True, answer: bool = True) -> None:
        """Turn `turn`'s prompt, answer or both leave the context (nothing if it is not
        there)."""
        self.resume_turn()  # an early answer read the context as it was: it begins again
        if prompt and answer:
            self.context.delete(turn)
        elif answer:
            self.context.truncate(turn, 0)
        elif prompt:
            self.context.drop_prompt(turn)

    def remember(self, answer: str | None, text: str | None = None) -> None:
        """Put a turn into the context without answering it: the caller's part (typed `text`,
        else what was heard since the last turn, if anything) and an answer the owner gives
        (text: fed back as a text-only answer is, its text and _eot with the audio streams
        padded). It takes the next turn number, as an answer would."""
        self.resume_turn()  # (the turn it would answer is remembered instead)
        if self.generating:
            raise SessionError("a turn can be remembered only between answers")
        self.turn += 1
        if not self.keep_history:
            self._reset_input()
            return
        prompt_ids, audio = self._heard_prompt(text)
        answer_ids = torch.zeros(self.spec.rows, 0, tokens.STREAMS, dtype=torch.long)
        if answer is not None:
            steps = [*self.tokenizer.encode(answer).ids, tokens.EOT]
            pad = [tokens.layer_shift(tokens.PAD_A, i) for i in range(tokens.AUDIO_LAYERS)]
            fed = torch.tensor([pad + [t] for t in steps], dtype=torch.long)
            answer_ids = fed[None].expand(self.spec.rows, -1, -1)
        ids = torch.cat([prompt_ids, answer_ids], dim=1)
        if ids.shape[1]:
            turn = ContextTurn(self.turn, ids, audio, prompt_ids.shape[1])
            self.context.add(turn, in_place=False)  # prefilled with the next turn's
        self._reset_input()

    def _heard_prompt(self, text: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompt of a remembered turn: typed, spoken (the audio heard so far), or none."""
        task = TEXT_TWINS.get(self.options.task, self.options.task)
        if text is not None:
            return build_prompt(task, text_ids=self.tokenizer.encode(text).ids).ids, None
        if self.samples == 0:
            return torch.zeros(self.spec.rows, 0, tokens.STREAMS, dtype=torch.long), None
        if self.encoder is not None:
            self._add_features(self.encoder.flush())
        else:
            audio = np.concatenate(self.audio or [np.zeros(0)])
            self._add_features(encode_exact(self.whisper, audio))
        features = torch.cat(self.features)
        return build_prompt(self.options.task, audio_frames=self.frames).ids, features

    def truncate(self, turn: int, played_frames: int) -> None:
        """Turn `turn`'s answer was heard only for `played_frames` frames: the rest leaves."""
        self.resume_turn()  # an early answer read the context as it was: it begins again
        self.context.truncate(turn, heard(played_frames))

    # --- decoding -----------------------------------------------------------------------------

    def accept(self, text_token: int, audio: list[int] | None) -> StepOutput:
        """Take this step's sampled ids; stream text; queue completed frames for the vocoder."""
        out = self.generation.accept(text_token, audio)
        if out.text_token is not None:
            self._mark(events.FirstText)
            if delta := self.detok.push(out.text_token):
                self._emit(events.TextDelta, text=delta)
        if out.frame is not None:
            self.vocoder.push(torch.tensor([out.frame]))
        return out

    def emit_audio(self, pcm: np.ndarray, lead_s: float = 0.0) -> None:
        """Send the answer's audio on. Its first audio waits until what it holds lasts `lead_s`
        (how long the next chunk may take to come), so that playback never runs dry."""
        if self._held is not None:  # nothing of this answer sent yet
            self._held.append(pcm)
            held = sum(p.size for p in self._held)
            if held == 0 or held < lead_s * tokens.OUTPUT_SAMPLE_RATE_HZ:
                return
            pcm, self._held = np.concatenate(self._held), None
            self._mark(events.FirstAudio)
        if pcm.size:
            self._emit(events.AudioChunk, pcm=pcm)

    def finish(self, tail_pcm: np.ndarray) -> None:
        """The answer ended: last text and audio, then Done; ready for the next turn."""
        if tail := self.detok.flush():
            self._emit(events.TextDelta, text=tail)
        self.emit_audio(tail_pcm)
        gen = self.generation
        text_ids = gen.text_tokens()
        self._emit(
            events.Done,
            reason=gen.stop_reason,
            steps=gen.steps,
            text=self.tokenizer.decode(text_ids).strip(),
            text_tokens=text_ids,
            frames=gen.frames(),
        )
        self._remember(gen.steps - 1)  # the prompt and every token fed back
        self._reset_answer()
        self._prefill_features()  # a next turn heard meanwhile can go in now

    def cancel(self, played_frames: int | None = None, turn: int | None = None) -> None:
        """Barge-in: drop the answer at once; conversation memory keeps what was played. (An
        early answer, which nobody has heard of, goes as resume_turn drops it.) `turn`: the
        answer meant, if not the latest: a later one is cancelled as it begins, an earlier
        one is over already."""
        if turn is not None and turn != self.turn:
            if turn > self.turn:  # its end_turn is still queued behind this cancel
                self._cancel_through = max(self._cancel_through, turn)
            else:  # superseded by a newer turn, which goes on
                self.sink(events.Cancelled(self.sid, time.monotonic(), turn, steps=0))
            return
        self.resume_turn()
        steps = self.gen.steps if self.gen is not None else 0
        if self.gen is not None:
            # Tokens of steps 0 .. steps-2 were fed back; frame f needs steps up to f + 7.
            fed = max(steps - 1, 0)
            self._remember(fed if played_frames is None else min(fed, heard(played_frames)))
        self._emit(events.Cancelled, steps=steps)
        self._reset_answer()
        self._prefill_features()

    def fail(self, message: str) -> None:
        """End the turn with an Error; the rest of a half-heard turn is ignored until its end.
        (An early answer that fails is dropped, the turn kept: its end answers it anew.)"""
        if self.early is not None:
            self.resume_turn()
            self._emit(events.Error, message=f"an early answer failed: {message}")
            self.context.valid, self.prefilled = 0, 0  # the rows may be half-written: again
            return
        self._emit(events.Error, message=message)
        self.context.valid = 0  # the cache rows may hold a half-written turn: prefill again
        self._prompt = None
        self.discarding = self.samples > 0
        self._reset_answer()
        self._reset_input()

    # --- events -------------------------------------------------------------------------------

    def _emit(self, kind, **fields) -> None:
        event = kind(self.sid, time.monotonic(), self.turn, **fields)
        if self.early is not None and kind is not events.Forgotten:  # (that one has happened)
            self.early.held.append(event)
        else:
            self.sink(event)

    def _mark(self, kind) -> None:
        if kind not in self.marks:
            self.marks[kind] = time.monotonic()
            self._emit(kind)
