"""The host's side of the decode steps on our kernels (realtime/decoding/gpu/step.py): which step
runs at which batch size, their CUDA graphs, and the requests' state in and out of them.

A `KernelDecoder` with products="auto" builds a step of each kind, each also launched as
programmatic dependents where the GPU can (`step_kinds`), all over one set of buffers; it times
their graphs at each bucket and runs each bucket on the fastest (`fastest_steps`); a kind that
fails to capture or run on this GPU is left out.

`KernelDecoder` is what the loops call: given the requests to step (host `Generation`s, which
stay the authority on stop rules) it loads their state into the buffers only when the batch
changed; otherwise the ids the device fed back are already in place, and a step costs one graph
replay and one (R, 8) copy of the sampled ids back to the host. Greedy requests and those that
sample with top_k <= TOP_K_MAX are drawn on the device (each step is captured twice: greedy
only, and with head_sample's draw); a request with no top_k (or a larger one) is sampled on the
host from the step's hidden states, and its batch reloads every step.

On CUDA the decoder also runs a step ahead (`run_ahead`): when every request is drawn on the
device, the next step is launched before this one's ids are handed back, so the GPU computes it
while the host applies the stop rules, detokenizes and queues the audio. The caller's next call
takes it if it names the same requests one step further (the device fed back exactly what the
host accepted). Otherwise it is dropped and the host's state loaded over it; only its GPU time
is lost, as all it wrote lies past each row's position, where the next real step writes before
anything reads.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from triton.errors import TritonError

from kernels import KernelsUnavailable
from kernels.triton_support import interpreting, supports_dependent_launches
from realtime.decoding.generate import Generation, StepRow, sample_step
from realtime.decoding.gpu.prompt_graphs import PromptGraphs
from realtime.decoding.gpu.step import (
    KernelStep,
    StepGraphs,
    buckets,
    compile_step_ahead,
    drawn_on_device,
    samples_on_device,
)
from realtime.decoding.options import STEP_PRODUCT_CHOICES, STEP_PRODUCTS
from realtime.device.cuda_graphs import capture
from realtime.model import tokens
from realtime.model.lm import KVCache, OmniLM

log = logging.getLogger(__name__)


def step_kinds(device: torch.device) -> list[tuple[str, bool]]:
    """(products, pdl) of every step that can run on `device`: both products, each also
    launched as programmatic dependents where the GPU can (and in the interpreter, which goes
    through the motions)."""
    dependents = supports_dependent_launches(device) or interpreting()
    return [(p, d) for d in ([False, True] if dependents else [False]) for p in STEP_PRODUCTS]


# While the steps are timed against each other, each row attends over this many positions of
# a cache slot of its own and needs the text head, as a row of a conversation does.
TIMING_CONTEXT = 256
TIMING_ROUNDS, TIMING_REPLAYS = 3, 10


def fastest_steps(
    steps: list[KernelStep], sizes: list[int], graphed: bool = True
) -> dict[int, KernelStep]:
    """For each of `sizes`, the one of `steps` (on the same buffers) whose greedy step runs
    fastest here, as it will run (`graphed`: replayed from CUDA graphs, else launched one by
    one), timed in rounds (the first one kind after another, the others interleaved), the best
    round counting.

    A step that fails to compile, capture or run here (launched as programmatic dependents on
    a driver that cannot capture those, say, or a kernel that needs more shared memory than
    this GPU gives it) is left out with a warning; the first must run.

    The timed rows write keys and values at TIMING_CONTEXT of the cache's slots 0, 1, ...:
    time the steps before any request holds a slot (KernelDecoder does, as it is built)."""
    first = steps[0]
    position = min(TIMING_CONTEXT, first.cache.max_seq - 1)
    first.positions.fill_(position), first.no_text.fill_(False)
    # each row its own slot, as in a batch of requests: all on one, a large batch's keys and
    # values would be one row's few MB, read from L2 instead of HBM
    rows = torch.arange(first.max_rows, device=first.slots.device)
    first.slots.copy_(rows % first.cache.slots)
    timers: dict[tuple[int, int], Callable[[], float]] = {}  # (size, step index) -> its timer
    best: dict[tuple[int, int], float] = {}  # (size, step index) -> its best round, ms
    kept: list[int] = []  # the indices of the steps that ran
    try:
        for i, step in enumerate(steps):
            try:
                mine = {(size, i): step_timer(step, size, graphed) for size in sizes}
                best |= {key: timer() for key, timer in mine.items()}  # the first round
            except (RuntimeError, TritonError) as exc:  # (Triton's own: not RuntimeErrors)
                if i == 0:
                    raise
                log.warning("the %s step failed here, so it is not timed: %s", step.kind, exc)
                continue
            timers |= mine
            kept.append(i)
        for _ in range(TIMING_ROUNDS - 1):
            for key, timer in timers.items():
                best[key] = min(best[key], timer())
    finally:  # back to padding rows on the pad slot at position 0 that skip the text
        first.positions.zero_(), first.no_text.fill_(True), first.slots.fill_(first.pad_slot)
    return {size: steps[min(kept, key=lambda i: best[size, i])] for size in sizes}


def step_timer(step: KernelStep, size: int, graphed: bool = True) -> Callable[[], float]:
    """A function that times `step` at `size` rows (greedy) -> milliseconds per step: the
    replays of its CUDA graph, or (not `graphed`, or on a CPU) one step launched and waited
    for."""
    device = step.cache.k.device
    if not (graphed and device.type == "cuda"):

        def once() -> float:
            began = time.perf_counter()
            step.forward(size)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return (time.perf_counter() - began) * 1000

        return once
    graph, _ = capture(partial(step.forward, size))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def replays() -> float:
        start.record()
        for _ in range(TIMING_REPLAYS):
            graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / TIMING_REPLAYS

    return replays


@dataclass
class _Launched:
    """A launched step's sampled ids on their way to the host: `host` (pinned on CUDA) is
    complete once `done` (a CUDA event; None on a CPU, where the copy has happened) fires."""

    host: torch.Tensor  # (rows, 8)
    done: "torch.cuda.Event | None"

    def wait(self) -> torch.Tensor:
        if self.done is not None:
            self.done.synchronize()
        return self.host.clone()  # the buffer is reused two steps on


class KernelDecoder:
    """Batched decode steps on the kernels for the requests the caller names each time.

    The host `Generation`s stay the authority: after each step the caller accepts the sampled
    ids into them. When the next call names the same requests, each exactly one step further
    and all drawn on the device, the device has already fed their ids back and nothing is
    loaded; with `run_ahead` (the default on CUDA) `decode` has even launched that step already.

    With products="auto" it is built over a cache that no request holds yet: the steps are
    timed on its slots (fastest_steps).
    """

    def __init__(
        self,
        lm: OmniLM,
        cache: KVCache,
        max_rows: int,
        pad_slot: int,
        graphs: bool = True,
        products: str = "cublas",
        pdl: bool = False,
        run_ahead: bool | None = None,
    ) -> None:
        if products not in STEP_PRODUCT_CHOICES:
            raise ValueError(f"products must be one of {STEP_PRODUCT_CHOICES}, not {products!r}")
        if products == "auto" and pdl:
            raise ValueError("products 'auto' times the steps with and without pdl itself")
        self.sizes, self.auto = buckets(max_rows), products == "auto"
        kinds = step_kinds(cache.k.device) if products == "auto" else [(products, pdl)]
        cuda = cache.k.is_cuda
        try:
            # the step whose buffers every step uses (and the first of those timed, with "auto")
            self.step = KernelStep(lm, cache, max_rows, pad_slot, *kinds[0])
            steps = [self.step]
            steps += [KernelStep(lm, cache, max_rows, pad_slot, *kind, buffers=self.step)
                      for kind in kinds[1:]]  # fmt: skip
            if cuda:  # (with several kinds, one that fails to compile is left out as timed)
                compile_step_ahead(steps, self.sizes, ignore_errors=len(steps) > 1)
            self.step_for, self.graphs = self._choose(steps, graphs and cuda)
        except (KernelsUnavailable, torch.OutOfMemoryError):
            raise  # (out of memory: the torch path would need that memory as well)
        except (RuntimeError, TritonError) as exc:  # (Triton's own: not RuntimeErrors)
            raise KernelsUnavailable(str(exc)) from exc
        if len(steps) > 1:
            log.info("the decode step's products by batch size: %s", self.products)
        self.prompts: PromptGraphs | None = None  # prefills replayed from graphs too
        if cuda and graphs:
            self.prompts = PromptGraphs(lm, cache, pad_slot)
        # On a CPU every launch runs to its end before the host goes on: nothing to overlap.
        self.run_ahead = cuda if run_ahead is None else run_ahead
        # Two host buffers for the sampled ids, taken in turn: a step's, and the one after it.
        shape = (max_rows, tokens.STREAMS)
        self._hosts = [torch.zeros(shape, dtype=torch.long, pin_memory=cuda) for _ in range(2)]
        self._events = [torch.cuda.Event() if cuda else None for _ in range(2)]
        self._turn = 0
        self._last: list[tuple[Generation, int]] | None = None  # what the device holds
        self._ahead: _Launched | None = None  # the step launched for _last one step further
        # steps that needed the host's state, ahead steps taken and dropped (for tests and
        # monitoring)
        self.loads = self.taken = self.dropped = 0

    def _choose(
        self, steps: list[KernelStep], graphed: bool
    ) -> tuple[dict[int, KernelStep], StepGraphs | None]:
        """Each bucket's step (with several, the one that runs it fastest on this device), and
        their graphs if `graphed`."""
        try:
            with torch.inference_mode():
                step_for = (
                    fastest_steps(steps, self.sizes, graphed) if len(steps) > 1
                    else dict.fromkeys(self.sizes, self.step)
                )  # fmt: skip
                return step_for, StepGraphs(step_for) if graphed else None
        except RuntimeError as exc:
            # (with "auto", those that fail were left out while they were timed)
            pdl_on_gpu = self.step.pdl and self.step.cache.k.is_cuda
            if isinstance(exc, torch.OutOfMemoryError) or not pdl_on_gpu:
                raise
            raise KernelsUnavailable(  # e.g. a driver older than CUDA 12.3
                f"capturing the step with programmatic dependent launches failed: {exc};"
                " run without pdl (realtime serve without --pdl), or let --step-products auto"
                " time what runs here"
            ) from exc

    @property
    def products(self) -> str:
        """Whose products the steps run: one of STEP_PRODUCTS, or with "auto" in words which
        (and whether launched as programmatic dependents) at which batch buckets, e.g.
        "fused+pdl at 1, 2 rows; cublas at 4, 8 rows"."""
        if not self.auto:
            return self.step.products
        sizes: dict[str, list[str]] = {}
        for size, step in self.step_for.items():
            sizes.setdefault(step.kind, []).append(str(size))
        return "; ".join(f"{kind} at {', '.join(rows)} rows" for kind, rows in sizes.items())

    def run(self, batch: list[StepRow]) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of `batch` -> (hidden (rows, C) on the device, valid until the next step;
        sampled (rows, 8) on the host: the layer-local audio ids and the text id the device
        drew for each request (greedy ones for a request sampled on the host), in every row of
        it; _pad_t where its text has ended)."""
        launched = self._launch(batch)
        return self.step.hidden[: len(launched.host)], launched.wait()

    def decode(self, batch: list[StepRow]) -> list[tuple[int, list[int] | None]]:
        """One step of `batch` -> each request's (text id, audio ids or None), as
        `Generation.accept` takes them: as the device drew them, or sampled here from the step's
        hidden states for a request the device does not draw (top-k, temperature, top-p: the
        same draw either way). With run_ahead, the next step is launched before this one's ids
        come back, if every request is drawn on the device and has room for it in the cache."""
        launched = self._launch(batch)
        if self.run_ahead and self._last is not None and self._has_room(batch):
            self._ahead = self._replay(len(launched.host), batch)
        sampled = launched.wait()
        chosen, row = [], 0
        for item in batch:
            if drawn_on_device(item):
                chosen.append(picked(sampled[row], item.gen))
            else:  # (then nothing ran ahead: the hidden states are still this step's)
                rows = self.step.hidden[row : row + len(item.slots)]
                chosen.append(sample_step(self.step.lm, rows, item.gen, item.options))
            row += len(item.slots)
        return chosen

    def _launch(self, batch: list[StepRow]) -> _Launched:
        """Launch the step of `batch` (or take the one launched ahead of it), claiming what the
        device will then hold."""
        continues, self._last = self._continues(batch), None  # a failing step leaves no claim
        ahead, self._ahead = self._ahead, None
        if continues and ahead is not None:
            self.taken += 1
            launched = ahead
        else:
            self.dropped += ahead is not None
            if not continues:
                self.step.load(batch)
                self.loads += 1
            launched = self._replay(sum(len(item.slots) for item in batch), batch)
        if all(drawn_on_device(item) for item in batch):
            self._last = [(item.gen, item.gen.steps) for item in batch]
        return launched

    def _replay(self, rows: int, batch: list[StepRow]) -> _Launched:
        """Run the step on the loaded (or fed back) inputs of `rows` rows and start copying its
        sampled ids to the host."""
        size = next(s for s in self.sizes if s >= rows)
        sampling = any(samples_on_device(item) for item in batch)
        if self.graphs is not None:
            self.graphs.replay(size, sampling)
        else:
            self.step_for[size].forward(size, sampling)
        host, done = self._hosts[self._turn][:rows], self._events[self._turn]
        self._turn ^= 1
        host.copy_(self.step.sampled[:rows], non_blocking=done is not None)
        if done is not None:
            done.record(torch.cuda.current_stream(self.step.cache.k.device))
        return _Launched(host, done)

    def _has_room(self, batch: list[StepRow]) -> bool:
        """Whether the step after this one stays inside every request's cache rows (a request
        at its last position stops before needing it, but a step ahead cannot know that)."""
        return all(item.gen.next_position + 1 < self.step.cache.max_seq for item in batch)

    def _continues(self, batch: list[StepRow]) -> bool:
        last = self._last
        return (
            last is not None
            and len(last) == len(batch)
            and all(drawn_on_device(item) for item in batch)
            and all(
                item.gen is gen and item.gen.steps == steps + 1
                for item, (gen, steps) in zip(batch, last, strict=True)
            )
        )


def picked(sampled_row: torch.Tensor, gen: Generation) -> tuple[int, list[int] | None]:
    """A request's (text id, audio ids or None) from its first row of `KernelDecoder.run`'s
    sampled ids, as `Generation.accept` takes them."""
    audio = sampled_row[: tokens.AUDIO_LAYERS].tolist() if gen.spec.audio_out else None
    return int(sampled_row[tokens.TEXT_STREAM]), audio
