"""The multi-session engine: one inference thread owns the model and serves every conversation.

Network code talks to it through `SessionHandle` methods, which only enqueue and return; the
thread loops over: control commands (cancel, close: they overtake queued audio), then input
(audio, end of turn, text: encoded and prefilled while the caller talks), then ONE batched
decode step for every session that is answering, then one batched vocoder call. Sessions join
the batch after their prefill and leave when they finish or are cancelled, between steps.

    gateway ──push_audio/end_turn──► inputs ─┐
    gateway ──cancel/close─────────► control ┤  inference thread: encode, prefill, step, vocode
    gateway ◄──────────── sink(event) ───────┘  (events: text, audio, timings, errors)

A fault stays with its session: a failed batched step or vocoder call is run again for each
session alone, and only those that fail alone lose their turn. If the thread itself dies, `down`
says why, `open_session` raises EngineDown, and every live session gets an Error.
"""

import logging
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from realtime.audio.encoder import BLOCK_MS, encode_chunked
from realtime.decoding.generate import StepRow, decode_step
from realtime.decoding.gpu.prompt_graphs import PromptGraphs
from realtime.decoding.runtime import MAX_ROWS, Runtime, kernel_decoder_or_none
from realtime.decoding.sampling import is_greedy, sample
from realtime.device.threads import on_fresh_thread
from realtime.engine import events
from realtime.engine.session import Session, SessionError, SessionOptions, cache_rows, check_options
from realtime.model import tokens
from realtime.model.prompts import TASKS

IDLE_WAIT_S = 0.05  # how long the thread sleeps when there is nothing to do
ENCODER_WARMUP_SAMPLES = BLOCK_MS * tokens.INPUT_SAMPLE_RATE_HZ // 1000  # a block of silence
STEP_LOG = 4096  # recent steps kept for benchmarks and monitoring
# An answer's first audio is held until it lasts this many of the loop's recent periods (the
# median of the last PERIODS: one slow step, such as the vocoder's first call of an answer,
# does not count): then playing it bridges the wait for the next chunk. Where a step takes
# most of a frame (the released model on a small CPU), the first chunk (2/3 of a frame: the
# vocoder runs 2.3 frames behind) would otherwise run out before the next one came. 1.5: the
# periods before an answer's first audio had no vocoder work in them, the next one will.
FIRST_AUDIO_PERIODS = 1.5
PERIODS = 8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    max_sessions: int = 4  # each may hold up to MAX_ROWS KV rows
    # The decode step on our Triton kernels: None follows the Runtime (CUDA, unless
    # REALTIME_TORCH_ONLY is set); True also runs them on a CPU under TRITON_INTERPRET=1.
    kernels: bool | None = None
    cuda_graphs: bool = True  # capture the kernel step per batch-size bucket (CUDA only)
    # The kernel step's products: "cublas" (torch's F.linear), "fused" (kernels/gemv.py, with
    # the norms, SwiGLU and the projections' reduction folded in; see realtime/decoding/gpu/step.py)
    # or "auto" (each batch bucket on the step that runs it fastest, timed at start: either
    # products, with pdl and without where the GPU can; then pdl itself must stay False)
    step_products: str = "cublas"
    # Launch the kernel step's kernels as programmatic dependents (sm_90+; see
    # kernels/triton_support.py): each starts while the one before it drains
    pdl: bool = False
    # Launch the next decode step while the host handles this one's ids (see
    # realtime/decoding/gpu/decoder.py's KernelDecoder); None: wherever that overlaps anything
    # (CUDA)
    run_ahead: bool | None = None
    # Positions each session's context holds (None: the model's block size): fewer keep less
    # KV memory per session, and a conversation's earlier turns leave sooner.
    max_seq: int | None = None


class EngineBusy(Exception):
    """Every session slot is taken."""


class EngineDown(EngineBusy):
    """The inference thread has died: no session can be served until the server restarts (a
    refusal like EngineBusy's, but for good)."""


class SessionHandle:
    """The network side's grip on one session: every method is thread-safe and non-blocking."""

    def __init__(self, engine: "Engine", sid: int) -> None:
        self._engine, self.id = engine, sid

    def push_audio(self, samples: np.ndarray) -> None:
        """16 kHz mono float32 samples of the caller's current turn."""
        self._engine._inputs.put((self.id, "audio", np.asarray(samples, np.float32)))
        self._engine._wake.set()

    def end_turn(
        self, speak: bool | None = None, transcribe: bool | None = None, tentative: bool = False
    ) -> None:
        """The caller's turn is over: answer it, aloud or in text only as `speak` says (None:
        as the session's task does), and transcribe it as `transcribe` says (None: as the
        session's options do). `tentative`: the caller has only paused; the answer begins,
        but its events are held until an end_turn confirms the turn, or dropped by
        resume_turn (Session.end_turn)."""
        self._engine._put_input(self.id, "end_turn", (speak, transcribe, tentative))

    def resume_turn(self) -> None:
        """The caller spoke again after a tentative end_turn: its answer goes, unheard, and
        the turn continues as if it had not paused."""
        self._engine._put_input(self.id, "resume", None)

    def rejoin_turn(self) -> None:
        """The caller went on just after their turn ended: cancel() its answer first; the
        turn's audio then opens the one being heard, and they are answered as one."""
        self._engine._put_input(self.id, "rejoin", None)

    def submit_text(self, text: str, speak: bool | None = None) -> None:
        """A typed turn, answered as end_turn says."""
        self._engine._put_input(self.id, "text", (text, speak))

    def clear_input(self) -> None:
        self._engine._put_input(self.id, "clear", None)

    def cancel(self, played_frames: int | None = None, turn: int | None = None) -> None:
        """Barge-in: stop the answer before the next step; `played_frames` of it were heard.
        `turn`: the answer meant (the number its events carry; None: whichever runs). A cancel
        overtakes queued input, so it may arrive before that turn's end_turn (it is stopped as
        it begins) or after a newer turn's (that newer answer goes on)."""
        self._engine._put_control(self.id, "cancel", (played_frames, turn))

    def set_history(self, keep: bool) -> None:
        """Keep the earlier turns in context from now on (realtime.engine.context), or forget
        them all."""
        self._engine._put_input(self.id, "history", keep)

    def forget(self, turn: int, prompt: bool = True, answer: bool = True) -> None:
        """Turn `turn` (the number its events carry) leaves the context: the caller's part
        (`prompt`), the answer, or both."""
        self._engine._put_input(self.id, "forget", (turn, prompt, answer))

    def remember(self, answer: str | None, text: str | None = None) -> None:
        """A turn enters the context unanswered: typed `text` (else what was heard since the
        last turn, if anything) and the given `answer` text. It takes the next turn number."""
        self._engine._put_input(self.id, "remember", (answer, text))

    def truncate(self, turn: int, played_frames: int) -> None:
        """Only `played_frames` frames of turn `turn`'s answer were heard: the context keeps
        that much of it."""
        self._engine._put_input(self.id, "truncate", (turn, played_frames))

    def close(self) -> None:
        """End the conversation; its slot is free for a new caller as soon as this returns."""
        self._engine._release(self.id)
        self._engine._put_control(self.id, "close", None)


class Engine:
    def __init__(self, runtime: Runtime, options: EngineOptions = EngineOptions()) -> None:
        """Allocates the KV cache and builds the decode step (on CUDA: compiles and captures),
        on a thread that ends when that is done: from start() on, only the inference thread runs
        torch here (realtime.device.threads says why)."""
        self.runtime, self.options = runtime, options
        rows = options.max_sessions * MAX_ROWS
        self._free_slots = list(range(rows))
        self._open: dict[int, list[int]] = {}  # session id -> its slots, from open to close
        self._sessions: dict[int, Session] = {}  # built on the inference thread
        self._next_id = 0
        self._lock = threading.Lock()  # guards slot allocation (open_session runs elsewhere)
        self._inputs: queue.SimpleQueue = queue.SimpleQueue()
        self._control: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self.down: str | None = None  # why the inference thread died, once it has
        # Tests only: called as fault_hook(stage, lanes) before each batched decode step
        # (stage "step") and vocoder call ("vocode"), and again for each lane alone when that
        # batch fails; what it raises is what a fault of those lanes would raise there.
        self.fault_hook: Callable[[str, list], None] | None = None
        self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)
        self.steps = 0  # batched decode steps run
        self.discarded_steps = 0  # steps of early answers that the caller's words overtook
        self.step_log: deque[tuple[int, float]] = deque(maxlen=STEP_LOG)  # (rows, ms) per step
        # s from one step's start to the next's (one that spans an idle spell is an outlier
        # the median ignores, and gone before an answer's first audio, 10 steps in at least)
        self._periods: deque[float] = deque(maxlen=PERIODS)
        self._last_step: float | None = None  # when the step before began
        on_fresh_thread(self._set_up, rows)

    def _set_up(self, rows: int) -> None:
        runtime, options = self.runtime, self.options
        use_kernels = runtime.kernels if options.kernels is None else options.kernels
        # The kernel step's padding rows write to one extra slot that no session owns.
        block = runtime.lm.cfg.block_size
        if options.max_seq is not None and not 0 < options.max_seq <= block:
            raise ValueError(f"max_seq {options.max_seq}: the model holds 1 to {block} positions")
        self.cache = runtime.lm.new_cache(rows + use_kernels, options.max_seq)
        self.decoder = None
        if use_kernels:
            # what the caller chose must build; the default step may leave it to torch
            chosen = options.pdl or options.step_products == "fused"
            required = bool(options.kernels) or runtime.kernels_required or chosen
            if self.cache.k.is_cuda:  # (seconds, tens at a first start: say so before)
                log.info(
                    "building the decode step on our Triton kernels for up to %d rows: its"
                    " kernels compile (at a first start only: Triton keeps them on disk) and its"
                    " CUDA graphs are captured", rows,
                )  # fmt: skip
            self.decoder = kernel_decoder_or_none(
                required, runtime.lm, self.cache, rows, pad_slot=rows, graphs=options.cuda_graphs,
                products=options.step_products, pdl=options.pdl, run_ahead=options.run_ahead,
            )  # fmt: skip
        if self.decoder is not None and self.decoder.prompts is not None:
            self._capture_ahead(self.decoder.prompts)

    def _capture_ahead(self, prompt_graphs: PromptGraphs) -> None:
        """On CUDA, do now what the first calls would otherwise wait for at their first end of
        turn: capture every prompt bucket's graph and the vocoder's stream graphs, and run the
        encoder once (CUDA's libraries set themselves up on first use)."""
        began, rt = time.perf_counter(), self.runtime
        rows = {spec.rows for spec in TASKS.values()}
        prompts = prompt_graphs.capture_all(rows, rt.lm.lm_head.weight.dtype)
        vocoder = rt.vocoder.capture_streams(self.options.max_sessions)
        with torch.inference_mode():
            encode_chunked(rt.whisper, np.zeros(ENCODER_WARMUP_SAMPLES, np.float32))
        torch.cuda.synchronize(self.cache.k.device)
        log.info(
            "captured %d prompt and %d vocoder graphs and warmed the encoder in %.1f s",
            prompts, vocoder, time.perf_counter() - began,
        )  # fmt: skip

    # --- lifecycle (any thread) ---------------------------------------------------------------

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)

    def open_session(
        self, options: SessionOptions, sink: Callable[[events.Event], None]
    ) -> SessionHandle:
        """A new conversation; raises EngineBusy when every slot is taken, EngineDown when the
        inference thread has died, SessionError when the options are unusable. Cheap: the
        session itself is built on the inference thread."""
        check_options(options)
        rows = cache_rows(options)
        with self._lock:
            if self.down is not None:
                raise EngineDown(self.down)
            if len(self._free_slots) < rows or len(self._open) >= self.options.max_sessions:
                raise EngineBusy(f"all {self.options.max_sessions} sessions are in use")
            slots = [self._free_slots.pop() for _ in range(rows)]
            sid, self._next_id = self._next_id, self._next_id + 1
            self._open[sid] = slots
        self._put_control(sid, "open", (slots, options, sink))
        return SessionHandle(self, sid)

    def _release(self, sid: int) -> None:
        """Give a closed session's slots back at once: a caller who hangs up and dials again
        gets in. Safe before the thread has dropped the session, because the control queue is
        FIFO: the newcomer's "open" runs after the old session's "close"."""
        with self._lock:
            self._free_slots += self._open.pop(sid, [])

    @property
    def decode_path(self) -> str:
        """What runs the decode step, in words (for logs)."""
        if self.decoder is None:
            return f"torch on {self.cache.k.device}"
        graphed = self.decoder.graphs is not None
        sizes = ", ".join(map(str, self.decoder.sizes))
        kinds = self.decoder.products
        products = f"products timed: {kinds}" if self.decoder.auto else f"{kinds} products"
        products += ", dependent launches" if self.decoder.step.pdl else ""
        launches = f"CUDA graphs for batch sizes {sizes}" if graphed else "launched eagerly"
        if self.decoder.run_ahead:
            launches += ", each step launched while the host handles the one before"
        return f"Triton kernels ({products}) on {self.cache.k.device}, {launches}"

    @property
    def active_sessions(self) -> int:
        return len(self._open)

    def _put_input(self, sid: int, kind: str, payload) -> None:
        self._inputs.put((sid, kind, payload))
        self._wake.set()

    def _put_control(self, sid: int, kind: str, payload) -> None:
        self._control.put((sid, kind, payload))
        self._wake.set()

    # --- the inference thread -----------------------------------------------------------------

    def _serve(self) -> None:
        """The thread's body: the loop, and should anything escape it, the engine goes down."""
        with torch.inference_mode():  # (failing a session resets its inference tensors)
            try:
                self._loop()
            except BaseException as exc:  # whatever it was, nobody must wait on a dead thread
                log.critical("the inference thread died", exc_info=exc)
                self._go_down(f"the inference thread died: {type(exc).__name__}: {exc}")

    def _go_down(self, reason: str) -> None:
        """Refuse new sessions from now on, then tell every session, built or still queued."""
        with self._lock:  # (an open_session that got in before queued its "open" already)
            self.down = reason
        for session in list(self._sessions.values()):
            try:
                session.fail(reason)
            except Exception:  # (its Error went out first, or its sink is broken)
                log.exception("session %d did not fail cleanly", session.sid)
        while True:
            try:
                sid, kind, payload = self._control.get_nowait()
            except queue.Empty:
                return
            if kind == "open":
                self._refuse(payload[2], sid, reason)

    def _refuse(self, sink, sid: int, reason: str) -> None:
        """Tell an owner whose session was queued to open that it never will."""
        try:
            sink(events.Error(sid, time.monotonic(), 0, f"cannot open the session: {reason}"))
        except Exception:  # its owner's bug: the others are still to be told
            log.exception("session %d's sink failed", sid)

    def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            worked = self._drain(self._control, self._on_control)
            worked |= self._drain(self._inputs, self._on_input)
            answering = [
                lane for s in self._sessions.values() for lane in s.lanes() if lane.generating
            ]
            if answering:
                self._step(answering)
            elif not worked:
                self._wake.wait(IDLE_WAIT_S)

    def _drain(self, q: queue.SimpleQueue, handle) -> bool:
        worked = False
        while True:
            try:
                sid, kind, payload = q.get_nowait()
            except queue.Empty:
                return worked
            worked = True
            if kind == "open":
                self._build(sid, *payload)
                continue
            session = self._sessions.get(sid)
            if session is None and sid in self._open:
                # Its "open" was queued after this loop drained the control queue: take it now,
                # so input never overtakes the session it is for.
                self._drain(self._control, self._on_control)
                session = self._sessions.get(sid)
            if session is not None:  # commands for a closed session are dropped
                self._guarded(session, handle, session, kind, payload)
                self.discarded_steps += session.discarded_steps
                session.discarded_steps = 0

    def _build(self, sid: int, slots: list[int], options: SessionOptions, sink) -> None:
        rt = self.runtime
        try:
            prompts = None if self.decoder is None else self.decoder.prompts
            self._sessions[sid] = Session(
                sid, slots, options, sink, rt.lm, self.cache, rt.whisper, rt.tokenizer, prompts
            )
        except Exception as exc:  # e.g. out of memory for the session's encoder state
            sink(events.Error(sid, time.monotonic(), 0, f"cannot open the session: {exc}"))
            self._release(sid)

    def _guarded(self, session: Session, fn, *args) -> None:
        """Run fn; a failure ends this session's turn with an Error event, nothing else."""
        try:
            fn(*args)
        except (SessionError, ValueError) as exc:
            session.fail(str(exc).splitlines()[0])
        except Exception as exc:  # a bug must not take the other sessions down
            session.fail(f"internal error: {type(exc).__name__}: {exc}")

    def _on_control(self, session: Session, kind: str, payload) -> None:
        if kind == "cancel":
            session.cancel(*payload)
        elif kind == "close":
            if session.generating:
                session.cancel()
            del self._sessions[session.sid]  # its slots went back when close() was called

    def _on_input(self, session: Session, kind: str, payload) -> None:
        if kind == "audio":
            session.feed_audio(payload)
        elif kind == "end_turn":
            session.end_turn(*payload)
        elif kind == "rejoin":
            session.rejoin_turn()
        elif kind == "resume":
            session.resume_turn()
        elif kind == "text":
            session.start_text(*payload)
        elif kind == "clear":
            session.clear_input()
        elif kind == "history":
            session.set_history(payload)
        elif kind == "forget":
            session.forget(*payload)
        elif kind == "remember":
            session.remember(*payload)
        elif kind == "truncate":
            session.truncate(*payload)
        self._finish_if_done(session.lanes())

    def _step(self, answering: list) -> None:
        """One decode step for every answering session and transcript (realtime.engine.transcript:
        it has a session's face to the batch), then the answers' audio."""
        began = time.perf_counter()
        if self._last_step is not None:
            self._periods.append(began - self._last_step)
        self._last_step = began
        try:
            rows = self._decode(answering)
        except Exception as exc:
            rows = self._decode_each(answering, exc)
        self.steps += 1
        self._vocode(answering)
        self._finish_if_done(answering)
        self.step_log.append((rows, (time.perf_counter() - began) * 1000))

    def _decode(self, lanes: list) -> int:
        """One decode step of `lanes`; the rows it ran."""
        if self.fault_hook is not None:
            self.fault_hook("step", lanes)
        if self.decoder is not None:
            return self._kernel_step(self.decoder, lanes)
        return self._torch_step(lanes)

    def _decode_each(self, answering: list, exc: Exception) -> int:
        """The batched step failed: step each lane alone, so that only those whose own step
        fails lose their turn. A retry is exact: a lane's position moves only when it accepts
        its ids, which no lane of a failed step did (the steps accept last, each lane guarded),
        and a retry writes its rows' KV at that position from the same inputs as the failed
        step did. (On the kernels, the failed step left no claim on what the device holds or
        a lone lane does not continue it: each retry loads its lane's state.)"""
        if len(answering) == 1:  # (alone it would fail the same way)
            answering[0].fail(f"decode step failed: {type(exc).__name__}: {exc}")
            return 0
        log.warning("a step of %d lanes failed (%r): stepping each alone", len(answering), exc)
        rows = 0
        for lane in answering:
            try:
                rows += self._decode([lane])
            except Exception as alone:
                lane.fail(f"decode step failed: {type(alone).__name__}: {alone}")
        return rows

    def _torch_step(self, answering: list[Session]) -> int:
        rows = [s.generation.next_input() for s in answering]  # (rows_i, 8) each
        ids = torch.cat(rows).to(self.cache.k.device)
        positions = torch.cat(
            [
                torch.full((len(r),), s.generation.next_position)
                for s, r in zip(answering, rows, strict=True)
            ]
        )
        slots = torch.cat([s.slots for s in answering])
        hidden = decode_step(self.runtime.lm, self.cache, ids, positions.to(ids.device), slots)
        self._sample(answering, hidden, [len(r) for r in rows])
        return len(ids)

    def _kernel_step(self, decoder, answering: list[Session]) -> int:
        """The step on the kernels: sessions take the ids the device drew (and has already fed
        back), or, sampling without a top-k the device takes, ids sampled from their hidden
        states (KernelDecoder.decode)."""
        batch = [StepRow(s.generation, s.slot_ids, s.decoding) for s in answering]
        for s, ids in zip(answering, decoder.decode(batch), strict=True):
            self._guarded(s, s.accept, *ids)
        return sum(len(item.slots) for item in batch)

    def _sample(self, answering: list[Session], hidden: torch.Tensor, counts: list[int]) -> None:
        """Batched heads: text logits for rows that still need them, audio for speaking rows;
        one argmax and one device-to-host copy per head when every session is greedy."""
        lm = self.runtime.lm
        starts = np.cumsum([0, *counts[:-1]]).tolist()
        texting = [
            (s, b) for s, b in zip(answering, starts, strict=True) if s.generation.needs_text_logits
        ]
        speaking = [
            (s, b) for s, b in zip(answering, starts, strict=True) if s.generation.spec.audio_out
        ]
        text_ids, audio_ids = {}, {}
        if texting:
            logits = lm.text_logits(hidden[[b + s.generation.spec.text_row for s, b in texting]])
            picks = _pick(logits, texting, tokens.TEXT_STREAM)
            text_ids = dict(zip([s for s, _ in texting], picks, strict=True))
        if speaking:
            logits = lm.audio_logits(hidden[[b + s.generation.spec.audio_row for s, b in speaking]])
            picks = _pick(logits, speaking, 0)
            audio_ids = dict(zip([s for s, _ in speaking], picks, strict=True))
        for s in answering:
            self._guarded(s, s.accept, text_ids.get(s, tokens.PAD_T), audio_ids.get(s))

    def _vocode(self, sessions: list[Session]) -> None:
        speaking = [s for s in sessions if s.gen is not None and s.gen.spec.audio_out]
        if not speaking:
            return
        # (statistics, not numpy: 0.2 us, where np.median takes 9, every step)
        lead_s = statistics.median(self._periods) * FIRST_AUDIO_PERIODS if self._periods else 0.0
        try:
            chunks = self._render(self.runtime.vocoder.step, speaking)
        except Exception as exc:
            chunks = self._render_each(self.runtime.vocoder.step, speaking, exc)
        for s, pcm in zip(speaking, chunks, strict=True):
            if pcm is not None:  # (None: it failed)
                s.emit_audio(pcm, lead_s)

    def _render(self, render, sessions: list[Session]) -> list:
        """Their vocoder streams through `render` (Vocoder.step or flush)."""
        if self.fault_hook is not None:
            self.fault_hook("vocode", sessions)
        return render([s.vocoder for s in sessions])

    def _render_each(self, render, sessions: list[Session], exc: Exception) -> list:
        """The batched vocoder call failed: call it for each session alone; those that fail
        alone lose their turn (None). A stream keeps its state and pending frames until its
        group's decode has run (Vocoder._decode), so a retry of the failed group is exact; a
        group decoded before the failure lost that chunk (streams wait in groups of as many
        pending frames, rarely more than one: only at an answer's first audio)."""
        if len(sessions) == 1:  # (alone it would fail the same way)
            sessions[0].fail(f"vocoder failed: {type(exc).__name__}: {exc}")
            return [None]
        log.warning("a vocoder call of %d failed (%r): calling each alone", len(sessions), exc)
        chunks: list = []
        for s in sessions:
            try:
                chunks += self._render(render, [s])
            except Exception as alone:
                s.fail(f"vocoder failed: {type(alone).__name__}: {alone}")
                chunks.append(None)
        return chunks

    def _finish_if_done(self, sessions: list[Session]) -> None:
        # (an early answer that is done waits for its turn to be confirmed: Session.lanes)
        done = [s for s in sessions if s.gen is not None and s.gen.done and not _early(s)]
        if not done:
            return
        speaking = [s for s in done if s.generation.spec.audio_out]
        flush = self.runtime.vocoder.flush
        try:
            tails = self._render(flush, speaking) if speaking else []
        except Exception as exc:
            tails = self._render_each(flush, speaking, exc)
        ended = dict(zip(speaking, tails, strict=True))
        for s in done:
            if s.gen is not None:  # (not failed in the flush)
                self._guarded(s, s.finish, ended.get(s, np.zeros(0, np.float32)))


def _pick(logits: torch.Tensor, rows: list[tuple[Session, int]], stream: int) -> list:
    """Each row's sampled ids (an int for text logits (N, V), 7 ints for audio (N, 7, V)); a
    sampling session draws at its next position, its first row as `stream`."""
    if all(is_greedy(s.decoding) for s, _ in rows):
        return logits.float().argmax(dim=-1).tolist()
    return [
        sample(logits[i], s.decoding, s.generation.next_position, stream).tolist()
        for i, (s, _) in enumerate(rows)
    ]


def _early(lane) -> bool:
    """An early answer's session (a transcript is never one)."""
    return isinstance(lane, Session) and lane.early is not None
