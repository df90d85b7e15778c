"""The decode step on our Triton kernels, with its inputs kept on the device and each batch
size's step captured as a CUDA graph.

    ids (R, 8) ─► embed_mean ─► [add_rmsnorm ─► qkv GEMM ─► decode_attention_qkv (RoPE, cache
        write, split-KV attention: 2 launches) ─► proj GEMM ─► add_rmsnorm ─► fc_1|fc_2 GEMM
        ─► swiglu ─► proj GEMM] x n_layer ─► add_rmsnorm (ln_f) ─► head_argmax (or
        head_sample) ─► feedback ─► ids (R, 8) for the next step

`KernelStep.forward(size)` is the hot step: static shapes, inputs and outputs in buffers
allocated once (intermediates come from the graph's memory pool), no host sync, so
`StepGraphs` can capture it once per batch-size bucket and replay it. Its products are one of
two kinds (`products=`):

- "cublas": torch's F.linear, everything between them ours (as drawn above);
- "fused": ours (kernels/gemv.py), with the ops around them folded in, 5 launches a block:

    [gemv(norm_1 + qkv + bias, split over K) ─► decode_attention_qkv (its split-KV stage)
        ─► gemv(the attention's splits combined + attn.proj, split over K)
        ─► gemv(norm_2 + fc_1|fc_2 + swiglu) ─► gemv(mlp.proj, split over K)] x n_layer

  where a split product's slices are summed by the next launch as it loads them; for more
  than PROLOGUE_ROWS rows the norms run as add_rmsnorm before their products and the
  attention combines its splits in its own second launch (8 launches a block).

With `pdl=True` (sm_90 and later) every kernel of the step is launched as a programmatic
dependent of the one before it (kernels/triton_support.py's `dependent_launches`): its
programs start while that launch drains, and the products fetch their weights into L2 while
they wait for its writes. Stream capture keeps this in the graphs as programmatic edges
(CUDA 12.3 and later).

`realtime/decoding/gpu/decoder.py` runs these steps for the engine and `realtime generate`: which
step at which batch size, the graphs, the host's side of each step.

Used on CUDA (or anywhere under TRITON_INTERPRET=1, which is how the tests run it on a CPU);
REALTIME_TORCH_ONLY=1 keeps the plain torch step everywhere.
"""

import logging
import time
from functools import partial

import torch

from kernels import KernelsUnavailable
from kernels.add_rmsnorm import add_rmsnorm
from kernels.decode_attention import decode_attention_qkv, split_len_for
from kernels.embed_mean import embed_mean
from kernels.feedback import StepRows, feedback
from kernels.gemv import Norm, gemv, split_for
from kernels.head_argmax import head_argmax
from kernels.head_sample import TOP_K_MAX, SamplingRows, head_sample
from kernels.layout import TokenLayout
from kernels.splits import SoftmaxSplits
from kernels.swiglu import swiglu
from kernels.triton_support import (
    compile_ahead,
    dependent_launches,
    interpreter_problem,
    interpreting,
    supports_dependent_launches,
)
from realtime.decoding.generate import StepRow
from realtime.decoding.options import STEP_PRODUCTS
from realtime.device.cuda_graphs import capture
from realtime.model import tokens
from realtime.model.lm import Attention, KVCache, OmniLM, RMSNorm, linear

log = logging.getLogger(__name__)

# The model's token layout as the kernels take it (they import nothing of realtime).
TOKEN_LAYOUT = TokenLayout(
    text_vocab=tokens.TEXT_VOCAB_PADDED,
    audio_vocab=tokens.AUDIO_LAYER_VOCAB,
    audio_layers=tokens.AUDIO_LAYERS,
    pad_t=tokens.PAD_T,
    eot=tokens.EOT,
    pad_a=tokens.PAD_A,
    eoa=tokens.EOA,
)

# Up to this many rows the fused step normalises, and combines the attention's splits over the
# keys, inside the products' loads, where every program re-reads its rows (and their slices or
# splits): cheap for a few rows, not for many.
PROLOGUE_ROWS = 4


def buckets(max_rows: int) -> list[int]:
    """Batch sizes a step is run (and captured) at: powers of two up to max_rows, and max_rows."""
    sizes = [1]
    while sizes[-1] * 2 < max_rows:
        sizes.append(sizes[-1] * 2)
    return sorted({*sizes, max_rows})


def drawn_on_device(row: StepRow) -> bool:
    """Greedy, or sampling with a top_k head_sample takes."""
    top_k = row.options.top_k
    return row.greedy or (top_k is not None and top_k <= TOP_K_MAX)


def samples_on_device(row: StepRow) -> bool:
    """Drawn by head_sample (not the greedy head)."""
    return drawn_on_device(row) and not row.greedy


class KernelStep:
    """The decode step of up to `max_rows` rows over buffers allocated once.

    Rows past the loaded ones are padding: they read cache slot `pad_slot` (which no request
    owns) at position 0 and never advance, so a bucket larger than the batch is harmless.
    """

    def __init__(
        self,
        lm: OmniLM,
        cache: KVCache,
        max_rows: int,
        pad_slot: int,
        products: str = "cublas",
        pdl: bool = False,
        buffers: "KernelStep | None" = None,
    ) -> None:
        """`buffers`: a step (of the same model, cache and rows) whose input and output buffers
        this one uses instead of its own, so that either can run the next step."""
        if any(block.mlp.fc_12 is None for block in lm.transformer.h):
            raise ValueError("the kernel step needs the model's SwiGLUs fused (OmniLM.fuse)")
        if lm.cos.dtype != torch.float32:
            raise ValueError("the kernel step needs fp32 RoPE tables, as load_lm builds them")
        if products not in STEP_PRODUCTS:
            raise ValueError(f"products must be one of {STEP_PRODUCTS}, not {products!r}")
        if problem := interpreter_problem():
            raise KernelsUnavailable(problem)
        if pdl and cache.k.is_cuda and not supports_dependent_launches(cache.k.device):
            raise ValueError("programmatic dependent launches (pdl) need a GPU of sm_90 or later")
        self.lm, self.cache, self.max_rows, self.pad_slot = lm, cache, max_rows, pad_slot
        self.products, self.pdl = products, pdl
        dev, R, cfg = cache.k.device, max_rows, lm.cfg
        # slices over K of the fused step's products that are too narrow to fill the GPU:
        # qkv's (the attention sums them), the attention's and the MLP's projections
        qkv_width = (cfg.n_head + 2 * cfg.n_query_groups) * cfg.head_size
        self.split_qkv = split_for(cfg.n_embd, qkv_width, dev)
        self.split_attn = split_for(cfg.n_head * cfg.head_size, cfg.n_embd, dev)
        self.split_mlp = split_for(cfg.intermediate_size, cfg.n_embd, dev)
        # The interpreter pays per program: few large head blocks run faster there.
        self.head_block_v = 8192 if interpreting() else None
        if buffers is not None:
            if (buffers.lm, buffers.cache, buffers.max_rows, buffers.pad_slot) != (
                lm, cache, max_rows, pad_slot
            ):  # fmt: skip
                raise ValueError("steps share buffers only over one model, cache and rows")
            for name in _BUFFERS:
                setattr(self, name, getattr(buffers, name))
            return

        def longs(fill=0):
            return torch.full((R,), fill, dtype=torch.long, device=dev)

        def flags(fill=False):
            return torch.full((R,), fill, dtype=torch.bool, device=dev)

        # inputs of the next step (fed back on the device, or loaded from the host)
        self.ids = torch.zeros(R, tokens.STREAMS, dtype=torch.long, device=dev)
        self.positions, self.slots, self.advance = longs(), longs(pad_slot), longs()
        self.audio_src, self.text_src = torch.arange(R, device=dev), torch.arange(R, device=dev)
        self.no_text, self.speaks, self.audio_out = flags(True), flags(), flags()
        self.first, self.text_ended = flags(), flags()  # decode steps are never a request's first
        self.sampling, self.top_k, self.seeds = flags(), longs(1), longs()  # how rows draw
        self.temperature = torch.ones(R, device=dev)
        self.top_p = torch.ones(R, device=dev)
        # the sampling rows' logits (head_sample writes them for its draw)
        head = lm.lm_head.weight
        self.logits = torch.zeros(R, tokens.VOCAB_PADDED, dtype=head.dtype, device=dev)
        # outputs of the last step
        self.hidden = torch.zeros(R, lm.cfg.n_embd, dtype=cache.k.dtype, device=dev)
        self.sampled = torch.zeros(R, tokens.STREAMS, dtype=torch.long, device=dev)

    @property
    def kind(self) -> str:
        """Its products, and "+pdl" if its kernels launch as programmatic dependents."""
        return self.products + ("+pdl" if self.pdl else "")

    def forward(self, size: int, sampling: bool = False) -> None:
        """One step of rows 0..size-1: reads the input buffers, writes the outputs, the caches
        and the next step's inputs. `sampling`: draw the `sampling` rows (else all are greedy)."""
        with dependent_launches(self.pdl):
            self._step(size, sampling)

    def _step(self, size: int, sampling: bool) -> None:
        lm, cfg = self.lm, self.lm.cfg
        ids, positions, slots = self.ids[:size], self.positions[:size], self.slots[:size]
        # No torch op (on our products no other launch at all): the attention takes the
        # positions as they are and the head ors the rows' two reasons to skip the text, so
        # with pdl every launch starts as the one before it drains.
        skip_text = (self.text_ended[:size], self.no_text[:size])
        x = embed_mean(ids[:, None], lm.transformer.wte.weight)[:, 0]  # (size, C)
        blocks = self._fused_blocks if self.products == "fused" else self._blocks
        x, residual = blocks(x, slots, positions)
        hidden = self.hidden[:size]  # (the step's output buffer, written in place)
        add_rmsnorm(x, residual, lm.transformer.ln_f.weight, cfg.norm_eps, out=hidden)

        extra = {} if self.head_block_v is None else {"block_v": self.head_block_v}
        head = lm.lm_head.weight
        if sampling:
            rows = SamplingRows(
                self.sampling[:size], self.top_k[:size], self.temperature[:size],
                self.top_p[:size], self.seeds[:size], positions,
            )  # fmt: skip
            logits = self.logits[:size]
            picks = head_sample(hidden, head, TOKEN_LAYOUT, skip_text, rows, logits, **extra)
        else:
            picks = head_argmax(hidden, head, TOKEN_LAYOUT, skip_text, **extra)  # (size, 8)
        # A request's ids in each of its rows (audio from its audio row, text from its text
        # row) to self.sampled, the next ones to ids, the positions advanced: one launch. The
        # host's Generations apply the stops.
        tail = StepRows(self.audio_src[:size], self.text_src[:size], ids, self.sampled[:size],
                        positions, self.advance[:size])  # fmt: skip
        feedback(picks, self.speaks[:size], self.audio_out[:size], self.first[:size],
                 self.text_ended[:size], TOKEN_LAYOUT, tail)  # fmt: skip

    def _blocks(self, x, slots, positions):
        """The blocks on cuBLAS's products -> (the last block's output, the residual stream)."""
        eps, residual = self.lm.cfg.norm_eps, None
        for layer, block in enumerate(self.lm.transformer.h):
            y, residual = add_rmsnorm(x, residual, block.norm_1.weight, eps)
            attn = block.attn.attn
            qkv = linear(y, attn.weight, attn.bias)  # (size, width)
            out = self._attend(qkv, layer, slots, positions)
            x = linear(out, block.attn.proj.weight)
            y, residual = add_rmsnorm(x, residual, block.norm_2.weight, eps)
            x = linear(swiglu(linear(y, block.mlp.fc_12)), block.mlp.proj.weight)
        return x, residual

    def _fused_blocks(self, x, slots, positions):
        """The blocks on kernels/gemv.py -> (the last block's output as slices, the residual
        stream)."""
        residual = None
        for layer, block in enumerate(self.lm.transformer.h):
            attn: Attention = block.attn
            qkv_w, qkv_b = attn.attn.weight, attn.attn.bias
            qkv, residual = self._normed(x, residual, block.norm_1, qkv_w, qkv_b,
                                         split_k=self.split_qkv)  # fmt: skip
            few = qkv.shape[0] <= PROLOGUE_ROWS  # the projection combines the splits
            out = self._attend(qkv, layer, slots, positions, reduce=not few)
            x, _ = gemv(out, attn.proj.weight, split_k=self.split_attn)
            h, residual = self._normed(x, residual, block.norm_2, block.mlp.fc_12, swiglu=True)
            x, _ = gemv(h, block.mlp.proj.weight, split_k=self.split_mlp)
        return x, residual

    def _normed(self, x, residual, norm: RMSNorm, weight, bias=None, swiglu=False, split_k=1):
        """norm(x + residual), then the product -> (its output, x + residual)."""
        eps = self.lm.cfg.norm_eps
        product = dict(bias=bias, swiglu=swiglu, split_k=split_k)
        if x.shape[0] <= PROLOGUE_ROWS:
            return gemv(x, weight, norm=Norm(norm.weight, residual, eps), **product)
        y, residual = add_rmsnorm(x, residual, norm.weight, eps)
        return gemv(y, weight, **product)[0], residual

    def _attend(self, qkv, layer: int, slots, positions, reduce: bool = True):
        """qkv (size, width) -> the attention's output (size, n_head * head_size), or without
        `reduce` its SoftmaxSplits, with the new keys and values written to the cache."""
        lm, cache = self.lm, self.cache
        # RoPE and the cache write at each row's position happen inside, and the row attends to
        # its cache up to and including it. The grid is fixed by the cache's length and the
        # bucket, never the rows' positions: no sync.
        split_len = split_len_for(qkv.shape[0], cache.k.shape[2], cache.max_seq, cache.k.device)
        out = decode_attention_qkv(qkv, lm.cos, lm.sin, cache.k, cache.v, layer, slots, positions,
                                   cache.max_seq, split_len, reduce)  # fmt: skip
        if isinstance(out, SoftmaxSplits):  # not reduced: the next launch combines the splits
            return out
        return out.reshape(qkv.shape[0], -1)

    def load(self, batch: list[StepRow]) -> int:
        """Write the host's state of `batch` into the input buffers and reset every other row to
        padding; one host-to-device transfer. Returns the number of rows loaded."""
        rows = sum(len(item.slots) for item in batch)
        if rows > self.max_rows:
            raise ValueError(f"{rows} rows do not fit a step of {self.max_rows}")
        # (R, 20): ids 0..7, then one column per field of _FIELDS, in that order
        host = torch.zeros(self.max_rows, tokens.STREAMS + len(_FIELDS), dtype=torch.long)
        host[:, tokens.STREAMS :] = torch.tensor(
            [_padding_fields(self.pad_slot, r) for r in range(self.max_rows)]
        )
        floats = torch.ones(self.max_rows, len(_FLOAT_FIELDS))  # (R, 2)
        row = 0
        for item in batch:
            host[row : row + item.gen.spec.rows, : tokens.STREAMS] = item.gen.next_input()
            for j, slot in enumerate(item.slots):
                host[row + j, tokens.STREAMS :] = torch.tensor(_fields(item, slot, row, j))
                floats[row + j] = torch.tensor([item.options.temperature, item.options.top_p])
            row += item.gen.spec.rows
        dev = host.to(self.ids.device, non_blocking=True)
        self.ids.copy_(dev[:, : tokens.STREAMS])
        for column, name in enumerate(_FIELDS, start=tokens.STREAMS):
            buffer = getattr(self, name)
            buffer.copy_(dev[:, column].to(buffer.dtype))
        dev = floats.to(self.ids.device, non_blocking=True)
        for column, name in enumerate(_FLOAT_FIELDS):
            getattr(self, name).copy_(dev[:, column])
        return rows


# The per-row inputs `load` writes besides the ids, in the order of its columns.
_FIELDS = (
    "slots", "positions", "audio_src", "text_src", "no_text", "speaks", "audio_out",
    "text_ended", "advance", "sampling", "top_k", "seeds",
)  # fmt: skip
_FLOAT_FIELDS = ("temperature", "top_p")


def _fields(item: StepRow, slot: int, row: int, j: int) -> list[int]:
    """The _FIELDS of row j of `item`, whose rows start at step row `row`."""
    gen, spec, sampling = item.gen, item.gen.spec, samples_on_device(item)
    return [
        slot,
        gen.next_position,
        row + spec.audio_row,  # audio_src: the request's ids come from these two rows
        row + spec.text_row,
        j != spec.text_row,  # no_text
        spec.audio_out and j == spec.audio_row,  # speaks
        spec.audio_out,
        gen.text_ended,
        1,  # advance
        sampling,
        item.options.top_k if sampling else 1,
        item.options.seed,
    ]


def _padding_fields(pad_slot: int, row: int) -> list[int]:
    """The _FIELDS of a padding row: the pad slot at position 0, never advancing, no text."""
    return [pad_slot, 0, row, row, True, False, False, False, 0, False, 1, 0]


# Every buffer a step reads or writes between launches (steps on other products share them).
_BUFFERS = ("ids", *_FIELDS, *_FLOAT_FIELDS, "first", "logits", "hidden", "sampled")


class StepGraphs:
    """Each bucket's step (`step_for[size].forward`) captured as one CUDA graph per head (greedy
    only, or with the draw), sharing one memory pool.

    Capturing runs nothing; the warm-up before each capture runs the step on padding rows
    only (compiling the kernels on the first), so no request's cache rows are touched.
    """

    def __init__(self, step_for: dict[int, KernelStep]) -> None:
        self.graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        pool = None
        for size in sorted(step_for, reverse=True):  # the largest first: the others fit its pool
            for sampling in (True, False):
                graph, _ = capture(partial(step_for[size].forward, size, sampling), pool)
                pool = graph.pool()
                self.graphs[size, sampling] = graph

    def replay(self, size: int, sampling: bool) -> None:
        self.graphs[size, sampling].replay()


def every_variant(step: KernelStep, sizes: list[int]) -> None:
    """step.forward at each of `sizes`, greedy and drawing: every launch its graphs hold."""
    for size in sizes:
        for drawing in (False, True):
            step.forward(size, drawing)


def compile_step_ahead(
    steps: list[KernelStep], sizes: list[int], ignore_errors: bool = False
) -> int:
    """Compile every kernel variant of `steps` at `sizes` (greedy and drawing) not compiled
    yet, many at once (kernels/triton_support.compile_ahead), and log how long it took -> how
    many there were. At a first start on a GPU they compile in seconds instead of one at a time
    at the first launches (half a second or more each); later starts find them in Triton's
    cache on disk. `ignore_errors`: a variant that fails to compile is left to fail at its
    first launch, not here."""

    def every_step():
        for step in steps:
            every_variant(step, sizes)

    began = time.perf_counter()
    with torch.inference_mode():
        variants = compile_ahead(every_step, ignore_errors=ignore_errors)
    if variants:
        log.info(
            "the decode step's %d kernel variants compiled (or found in Triton's cache) in %.1f s",
            variants, time.perf_counter() - began,
        )  # fmt: skip
    return variants
