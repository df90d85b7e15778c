"""realtime/decoding/gpu/step.py and decoder.py: the decode step on the kernels, and the
decoder that runs it, against the torch step they replace.

On a CPU the kernels run in Triton's interpreter (about a second a step at the tiny preset, so
the runs are short); on a GPU the same tests run compiled, with each bucket's CUDA graph.
float32 is compared token for token (with the reference implementation's goldens too); bf16
within its rounding.
"""

import dataclasses
import logging
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

from kernels import gemv
from kernels.head_argmax import head_argmax_ref
from realtime.decoding.generate import Generation, StepRow, decode_step, generate_tokens
from realtime.decoding.gpu import decoder as kernel_decoder
from realtime.decoding.gpu import step as kernel_step
from realtime.decoding.gpu.decoder import KernelDecoder, picked
from realtime.decoding.gpu.step import buckets
from realtime.decoding.options import STEP_PRODUCT_CHOICES, STEP_PRODUCTS, DecodingOptions
from realtime.decoding.runtime import MAX_ROWS, Runtime
from realtime.engine import events
from realtime.engine.engine import Engine, EngineOptions
from realtime.engine.session import SessionOptions
from realtime.model import checkpoint, tokens
from realtime.model.prompts import TASKS, Task

from ..test_engine import Recorder, clip, frames_of, offline, speak
from ..test_parity import CASES, request_for

GREEDY = DecodingOptions()

TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-6, atol=2e-2),  # a few bf16 roundings apart after 2 layers
}


def test_buckets():
    assert buckets(1) == [1]
    assert buckets(2) == [1, 2]
    assert buckets(12) == [1, 2, 4, 8, 12]
    assert buckets(64) == [1, 2, 4, 8, 16, 32, 64]


def use_products(name: str, monkeypatch) -> str:
    """ "cublas", "fused" (norms and the attention's split reduce in the products' loads, as
    for a step of few rows), "fused-norms-apart" (both in launches of their own before the
    products, as for a step of many) or "fused-sliced"
    (K tiles of 16, so that the tiny model's products split over K as the released model's do:
    qkv's, attn.proj's and mlp.proj's into 4, 4 and 8 slices) or "fused-one-split" (the
    attention over the whole cache in one split, as a large batch takes longer splits) ->
    products=."""
    if name == "fused-norms-apart":
        monkeypatch.setattr(kernel_step, "PROLOGUE_ROWS", 0)
    if name == "fused-one-split":
        monkeypatch.setattr(
            kernel_step, "split_len_for", lambda rows, groups, max_seq, dev: max_seq
        )
    if name == "fused-sliced":
        narrow = gemv.choose_tiles

        def tiles(n, device):
            return dataclasses.replace(narrow(n, device), block_k=16)

        monkeypatch.setattr(gemv, "choose_tiles", tiles)
    return name.removesuffix("-norms-apart").removesuffix("-sliced").removesuffix("-one-split")


SLOW = pytest.mark.slow
VARIANTS = ("fused-norms-apart", "fused-sliced", "fused-one-split")  # of the fused products


@pytest.fixture(params=["cublas", "fused", *(pytest.param(name, marks=SLOW) for name in VARIANTS)])
def products(request, monkeypatch) -> str:
    return use_products(request.param, monkeypatch)


@pytest.fixture(params=["fused", "fused-norms-apart", "fused-sliced"])
def fused(request, monkeypatch) -> str:
    return use_products(request.param, monkeypatch)


def history(task: Task, prompt_length: int, steps: int, seed: int) -> Generation:
    """A request `steps` into its answer, with random ids fed back."""
    gen = Generation(task, prompt_length, max_steps=1000)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        text = int(torch.randint(0, tokens.TEXT_VOCAB, (1,), generator=g))
        audio = torch.randint(0, tokens.CODEBOOK_SIZE, (tokens.AUDIO_LAYERS,), generator=g)
        gen.accept(text, audio.tolist() if gen.spec.audio_out else None)
    return gen


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=SLOW)])
def test_a_step_equals_the_torch_step(device, tiny_lm, dtype, products):
    """Three requests (4 rows: the a2a-batch one takes two) at different positions, in a
    bucket of 4 with one padding row; then a second step fed back on the device."""
    lm = tiny_lm(dtype, device)
    cache = lm.new_cache(6, max_seq=256)  # slots 0..4 for requests, 5 for padding
    g = torch.Generator(device=device).manual_seed(0)
    for buffer in (cache.k, cache.v):  # earlier positions' keys and values
        buffer.copy_(torch.randn(buffer.shape, generator=g, device=device).to(dtype))
    batch = [
        StepRow(history(Task.A2A, 40, 9, seed=1), [3], GREEDY),
        StepRow(history(Task.A2A_BATCH, 150, 3, seed=2), [0, 4], GREEDY),  # keys in 2 splits
        StepRow(history(Task.T2T, 7, 1, seed=3), [1], GREEDY),
    ]
    untouched = cache.k[:, 2].clone()  # a slot no request owns
    twin = lm.new_cache(6, max_seq=256)  # the torch step's cache
    twin.k.copy_(cache.k), twin.v.copy_(cache.v)
    decoder = KernelDecoder(lm, cache, max_rows=6, pad_slot=5, products=products)

    for step in range(2):
        ids = torch.cat([item.gen.next_input() for item in batch]).to(device)
        positions = torch.tensor(
            [item.gen.next_position for item in batch for _ in item.slots], device=device
        )
        slots = torch.tensor([s for item in batch for s in item.slots], device=device)
        if step == 1:  # the device's own feedback equals the host's rules
            assert torch.equal(decoder.step.ids[:4], ids)
            assert torch.equal(decoder.step.positions[:4], positions)
        with torch.inference_mode():
            want = decode_step(lm, twin, ids, positions, slots)  # (4, C)
            hidden, sampled = decoder.run(batch)
        torch.testing.assert_close(hidden, want, **TOLERANCE[dtype])
        torch.testing.assert_close(cache.k[:, :5], twin.k[:, :5], **TOLERANCE[dtype])
        torch.testing.assert_close(cache.v[:, :5], twin.v[:, :5], **TOLERANCE[dtype])
        if dtype == torch.float32:
            skip = torch.tensor([False, True, False, False], device=device)  # a2a-batch row 0
            ref = head_argmax_ref(want, lm.lm_head.weight, kernel_step.TOKEN_LAYOUT, skip).cpu()
            assert torch.equal(sampled[0], ref[0])
            assert torch.equal(sampled[1], torch.cat((ref[1, :7], ref[2, 7:])))  # gathered
            assert torch.equal(sampled[2], sampled[1])
            assert torch.equal(sampled[3, 7:], ref[3, 7:])
        row = 0
        for item in batch:
            item.gen.accept(*picked(sampled[row], item.gen))
            row += len(item.slots)
    assert decoder.loads == 1
    assert torch.equal(cache.k[:, 2], untouched)


@pytest.mark.slow
def test_steps_run_ahead_equal_steps_run_one_at_a_time(device, tiny_lm):
    """A decoder that launches each step before the host has taken the last one's ids (the
    default on CUDA) against one that does not, on twin caches, through everything that makes
    it drop a step it ran ahead: a request leaving, one joining, one sampled on the host (no
    step ahead then). The same ids every call, and the same keys and values wherever a real
    step wrote them."""
    lm = tiny_lm(torch.float32, device)
    host_drawn = DecodingOptions(temperature=1.0, top_k=None, top_p=0.9, seed=4)
    requests = {  # name: (task, prompt length, steps so far, seed, slots, options)
        "a": (Task.A2A, 20, 9, 1, [0], GREEDY),
        "b": (Task.A2A_BATCH, 12, 3, 2, [1, 2], GREEDY),
        "c": (Task.T2T, 7, 1, 3, [3], GREEDY),
        "d": (Task.A2A, 9, 2, 4, [4], host_drawn),
    }
    plan = ["ab", "ab", "ab", "a", "ac", "ac", "acd", "ac"]
    twins = []
    for run_ahead in (True, False):
        cache = lm.new_cache(6, max_seq=64)  # slots 0..4 for requests, 5 for padding
        g = torch.Generator(device=device).manual_seed(0)
        for buffer in (cache.k, cache.v):
            buffer.copy_(torch.randn(buffer.shape, generator=g, device=device))
        decoder = KernelDecoder(lm, cache, 5, pad_slot=5, products="fused", run_ahead=run_ahead)
        rows = {
            name: StepRow(history(task, length, steps, seed), slots, opts)
            for name, (task, length, steps, seed, slots, opts) in requests.items()
        }
        chosen = []
        with torch.inference_mode():
            for names in plan:
                batch = [rows[name] for name in names]
                chosen.append(ids := decoder.decode(batch))
                for item, (text, audio) in zip(batch, ids, strict=True):
                    assert not item.gen.accept(text, audio).done
        twins.append((decoder, cache, chosen, rows))
    (ahead, cache, chosen, rows), (plain, twin, want, _) = twins
    assert chosen == want
    for item in rows.values():  # every position a request's steps wrote
        written = slice(item.gen.prompt_length, item.gen.next_position)
        for slot in item.slots:
            assert torch.equal(cache.k[:, slot, :, written], twin.k[:, slot, :, written])
            assert torch.equal(cache.v[:, slot, :, written], twin.v[:, slot, :, written])
    # taken at the 2nd, 3rd and 6th calls; dropped when b left, c joined, d (host-drawn) came
    assert (ahead.taken, ahead.dropped, ahead.loads) == (3, 3, 5)
    assert (plain.taken, plain.dropped, plain.loads) == (0, 0, 5)


def test_no_step_runs_ahead_past_the_cache(device, tiny_lm):
    """A request at its cache's last position decodes, but nothing is launched for the
    position after it, which is the next slot's first."""
    lm = tiny_lm(torch.float32, device)
    cache = lm.new_cache(3, max_seq=16)
    decoder = KernelDecoder(lm, cache, 1, pad_slot=2, products="fused", run_ahead=True)
    item = StepRow(history(Task.A2T, 13, 2, seed=7), [0], GREEDY)  # next position 14
    neighbour = cache.k[:, 1].clone()
    with torch.inference_mode():
        item.gen.accept(*decoder.decode([item])[0])  # at 14, ahead at 15: the last
        assert decoder._ahead is not None
        decoder.decode([item])  # at 15: no position 16
        assert decoder._ahead is None
    assert decoder.taken == 1
    assert torch.equal(cache.k[:, 1], neighbour)


@pytest.mark.slow
def test_auto_runs_each_bucket_on_the_products_timed_fastest(device, tiny_lm, monkeypatch):
    """products="auto": every kind of step timed at each bucket (here by a stand-in timer: ours
    as programmatic dependents, where they run, faster at 1 row, cuBLAS's plain at 2), each
    bucket then run on its winner over the one set of buffers, left as padding rows again; a
    request's tokens as on either products alone."""
    kinds = kernel_decoder.step_kinds(torch.device(device))
    pdl = len(kinds) == 4  # (pdl goes through the motions in the interpreter too)
    timed, fastest = [], {("fused", pdl, 1), ("cublas", False, 2)}

    def timer(step, size, graphed):
        assert graphed == (device == "cuda")  # timed as the decoder will run: from its graphs

        def ms():
            timed.append((step.products, step.pdl, size, int(step.positions[0]),
                          bool(step.no_text[0]), step.slots.tolist()))  # fmt: skip
            return 1.0 if (step.products, step.pdl, size) in fastest else 2.0

        return ms

    monkeypatch.setattr(kernel_decoder, "step_timer", timer)
    lm = tiny_lm(torch.float32, device)
    cache = lm.new_cache(3, max_seq=64)
    decoder = KernelDecoder(lm, cache, 2, pad_slot=2, products="auto")
    chosen = {(step.products, step.pdl, size) for size, step in decoder.step_for.items()}
    assert chosen == fastest
    assert decoder.products == f"fused{'+pdl' if pdl else ''} at 1 rows; cublas at 2 rows"
    assert decoder.step_for[1].ids is decoder.step_for[2].ids  # one set of buffers
    # timed in rounds, each kind and bucket in turn, as rows that attend and need the text
    assert len(timed) == kernel_decoder.TIMING_ROUNDS * len(kinds) * 2
    assert {(products, pdl, size) for products, pdl, size, *_ in timed} == {
        (*kind, size) for kind in kinds for size in (1, 2)
    }
    # (at the cache's last position, each row on a slot of its own)
    assert all(at == 63 and not skip and slots == [0, 1] for *_, at, skip, slots in timed)
    step = decoder.step
    assert not step.positions.any() and step.no_text.all() and (step.slots == 2).all()
    with pytest.raises(ValueError, match="with and without pdl itself"):
        KernelDecoder(lm, cache, 2, pad_slot=2, products="auto", pdl=True)

    ran = []  # which step each call ran
    for step in decoder.step_for.values():
        forward = step.forward
        monkeypatch.setattr(
            step, "forward", lambda *a, f=forward, p=step.products: ran.append(p) or f(*a)
        )

    def tokens_of(decoder, rows):
        batch = [StepRow(history(Task.A2A, 20, 3, seed=s), [s], GREEDY) for s in range(rows)]
        with torch.inference_mode():
            return [decoder.decode(batch) for _ in range(2)]

    for rows, products in ((1, "fused"), (2, "cublas")):
        alone = KernelDecoder(lm, lm.new_cache(3, max_seq=64), 2, pad_slot=2, products=products)
        ran.clear()
        assert tokens_of(decoder, rows) == tokens_of(alone, rows)
        assert ran == [products, products]


def test_auto_leaves_out_the_steps_that_fail_here(device, tiny_lm, monkeypatch, caplog):
    """products="auto" on a GPU where some kinds of step cannot run (say, programmatic
    dependents on a driver that cannot capture them, or a kernel that needs more shared memory
    than the GPU has, which Triton raises as its own error, not a RuntimeError): those fail
    while they are timed (here a stand-in timer fails them as it captures, or as it first
    runs), are left out with a warning, and the buckets run on the others; if the first kind
    fails too, so does auto."""
    from triton.runtime.errors import OutOfResources

    kinds = kernel_decoder.step_kinds(torch.device(device))
    # kind -> what it raises as it first runs; every pdl kind fails as it is captured
    failing = {"fused": OutOfResources(147456, 101376, "shared memory")}
    timed = []

    def timer(step, size, graphed):
        if step.pdl:
            raise RuntimeError("operation not permitted when stream is capturing")

        def ms():
            if step.kind in failing:
                raise failing[step.kind]
            timed.append((step.kind, size))
            return 1.0

        return ms

    monkeypatch.setattr(kernel_decoder, "step_timer", timer)
    lm = tiny_lm(torch.float32, device)
    with caplog.at_level(logging.WARNING, logger=kernel_decoder.log.name):
        decoder = KernelDecoder(lm, lm.new_cache(3, max_seq=64), 2, pad_slot=2, products="auto")
    assert decoder.products == "cublas at 1, 2 rows"
    assert set(timed) == {("cublas", 1), ("cublas", 2)}
    assert len(timed) == kernel_decoder.TIMING_ROUNDS * 2
    warned = " ".join(record.message for record in caplog.records)
    for products, pdl in kinds[1:]:  # all but plain cuBLAS, each named once
        assert warned.count(f"the {products}{'+pdl' if pdl else ''} step failed here") == 1
    assert warned.count("failed here") == len(kinds) - 1
    assert not decoder.step.positions.any() and decoder.step.no_text.all()

    failing["cublas"] = RuntimeError("Triton Error [CUDA]: operation not supported")
    with pytest.raises(RuntimeError, match="not supported"):
        KernelDecoder(lm, lm.new_cache(3, max_seq=64), 2, pad_slot=2, products="auto")


def test_the_torch_path_stands_in_where_the_kernel_step_cannot_be_built(
    tiny_dir, monkeypatch, caplog
):
    """A GPU whose Triton cannot build the step (a kernel it cannot compile or fit, no Triton
    at all): where the kernels were the default, the engine and single requests decode on the
    torch path with a warning that says why, and the engine serves; where they were asked
    for (or a kind of step: our products, dependent launches), that fails. Running out of
    memory is not such a reason."""
    from triton.runtime.errors import OutOfResources

    from kernels import KernelsUnavailable
    from realtime.decoding import runtime as runtime_module

    failure: list[Exception] = [OutOfResources(147456, 101376, "shared memory")]

    def unbuildable(*args, **kwargs):
        raise failure[0]

    monkeypatch.setattr(kernel_decoder, "KernelStep", unbuildable)
    monkeypatch.setattr(runtime_module, "kernel_step_enabled", lambda device: True)
    files = checkpoint.resolve(str(tiny_dir), offline=True)
    rt = Runtime(files, "cpu", torch.float32)  # the kernels by default, as on a GPU
    assert rt.kernels and not rt.kernels_required
    with caplog.at_level(logging.WARNING, logger=runtime_module.log.name):
        engine = Engine(rt, EngineOptions(max_sessions=1))
    assert engine.decoder is None and engine.decode_path == "torch on cpu"
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "runs on torch" in warning and "Required: 147456" in warning
    assert "REALTIME_TORCH_ONLY=1" in warning
    pcm, opts = clip("q_capital.wav", 1.0), DecodingOptions(max_new_tokens=4)
    engine.start()
    try:  # it serves, as on the torch path
        rec = Recorder()
        speak(engine.open_session(SessionOptions(task=Task.A2T, decoding=opts), rec), pcm)
        done = rec.wait_for(events.Done)[0]
    finally:
        engine.stop()
    alone = offline(Runtime(files, "cpu", torch.float32, kernels=False), Task.A2T, pcm, opts)
    assert done.text_tokens == alone.text_tokens and done.steps == alone.steps

    for asked in ({"kernels": True}, {"step_products": "fused"}, {"pdl": True}):
        with pytest.raises(KernelsUnavailable, match="Required: 147456"):
            Engine(rt, EngineOptions(max_sessions=1, **asked))
    failure[0] = torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(torch.OutOfMemoryError):
        Engine(rt, EngineOptions(max_sessions=1))

    # a single request's decoder: the same, tried once; no Triton at all is such a reason too
    monkeypatch.setitem(sys.modules, "realtime.decoding.gpu.decoder", None)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=runtime_module.log.name):
        assert rt.kernel_decoder() is None and rt.kernel_decoder() is None
    assert not rt.kernels and len(caplog.records) == 1
    assert "realtime.decoding.gpu.decoder" in caplog.records[0].getMessage()
    required = Runtime(files, "cpu", torch.float32, kernels=True)
    with pytest.raises(ImportError):
        required.kernel_decoder()


def test_a_step_timer_times_a_step(device, tiny_lm):
    lm = tiny_lm(torch.float32, device)
    step = kernel_step.KernelStep(lm, lm.new_cache(2, max_seq=16), 1, 1, "fused")
    ms = kernel_decoder.step_timer(step, 1)
    assert 0 < ms() < 60_000


def test_sliced_products_split_at_the_tiny_shapes(tiny_lm, monkeypatch):
    """ "fused-sliced" splits what the released shapes split (else its tests test nothing)."""
    lm = tiny_lm(torch.float32)
    step = kernel_step.KernelStep(
        lm, lm.new_cache(2), 1, 1, use_products("fused-sliced", monkeypatch)
    )
    assert (step.split_qkv, step.split_attn, step.split_mlp) == (4, 4, 8)


class TorchKernels(TorchDispatchMode):
    """The torch ops run within that would launch a GPU kernel (not views or allocations)."""

    FREE = {"view", "_unsafe_view", "slice", "select", "reshape", "expand", "t", "transpose",
            "unsqueeze", "squeeze", "as_strided", "alias", "detach", "empty", "empty_like",
            "empty_strided", "permute", "split", "unbind", "lift_fresh"}  # fmt: skip

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if (name := func.overloadpacket.__name__) not in self.FREE:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("products", "rows"), [("fused", 1), ("fused", 8), ("cublas", 1)])
def test_launches_a_step(monkeypatch, products, rows):
    """What a step launches, counted on meta tensors (nothing runs): on our products 5
    kernels a block for up to PROLOGUE_ROWS rows (8 for more), and 5 around the blocks
    (embeddings, the last norm, the head's two, the feedback that is the whole tail); on
    cuBLAS's 5 of ours and 4 products a block. No other torch op (nothing but cuBLAS breaks the
    chain of programmatic dependents)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from realtime.model.config import PRESETS
    from realtime.model.lm import OmniLM, rope_cache

    from .compile_check import KERNEL_MODULES

    ours = []
    for launcher in (JITFunction, InterpretedFunction):  # compiled, interpreted: not run
        monkeypatch.setattr(launcher, "run", lambda self, *a, **kw: ours.append(self.__name__))
    for name in KERNEL_MODULES:
        monkeypatch.setattr(f"kernels.{name}.runs_kernel", lambda *tensors: True)
    cfg = PRESETS["tiny"].model
    with torch.device("meta"):
        lm = OmniLM(cfg)
        lm.cos, lm.sin = (t.to("meta") for t in rope_cache(cfg.block_size, cfg.head_size, 10))
        lm.fuse()
        step = kernel_step.KernelStep(lm, lm.new_cache(9), 8, pad_slot=8, products=products)
        with (torch_ops := TorchKernels()):
            step.forward(rows)
    per_block = 5 if products == "cublas" or rows <= kernel_step.PROLOGUE_ROWS else 8
    assert len(ours) == per_block * cfg.n_layer + 5
    products_run = [op for op in torch_ops.ops if op in ("addmm", "mm")]
    assert len(products_run) == (4 * cfg.n_layer if products == "cublas" else 0)
    assert len(products_run) == len(torch_ops.ops)  # no other torch op


def test_unknown_products_are_refused(tiny_lm):
    lm = tiny_lm(torch.float32)
    with pytest.raises(ValueError, match="products must be one of"):
        KernelDecoder(lm, lm.new_cache(2, max_seq=16), max_rows=1, pad_slot=1, products="mkl")
    with pytest.raises(ValueError, match="products must be one of"):  # a decoder's choice only
        kernel_step.KernelStep(lm, lm.new_cache(2, max_seq=16), 1, 1, products="auto")


@pytest.fixture(scope="module")
def runtimes(tiny_dir):
    """(torch, kernels) runtimes of the tiny seed-0 model in float32, on the test device."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    files = checkpoint.resolve(str(tiny_dir), offline=True)
    return (
        Runtime(files, device, torch.float32, kernels=False),
        Runtime(files, device, torch.float32, kernels=True),
    )


# Cases that pass through every stop rule (_eot then forced _pad_t, then _eoa; _eoa on the
# first decode step), and short prefixes of the others' goldens (greedy: a prefix is exact).
THROUGH_STOPS = [
    c for c in CASES if c["input"] in ("What is your name?", "How are you feeling today?")
]
PREFIXES = [next(c for c in CASES if c["task"] == t) for t in ("a2a", "a2t", "a2a-batch", "t2t")]
GOLDEN_CASES = [pytest.param(case, marks=SLOW) for case in THROUGH_STOPS] + [
    dict(case, max_new_tokens=6) for case in PREFIXES
]


@pytest.mark.parametrize(
    "case", GOLDEN_CASES, ids=lambda c: f"{c['task']}-{c['input'][:12]}-{c['max_new_tokens']}"
)
def test_greedy_tokens_equal_the_reference(device, runtimes, case, monkeypatch):
    """Each step launched ahead of the host's stop rules, as on CUDA (on a CPU too, here)."""
    _, rt = runtimes
    request = request_for(case)
    inp = rt.prepare(request)
    decoder = rt.kernel_decoder()
    monkeypatch.setattr(decoder, "run_ahead", True)
    loads, taken = decoder.loads, decoder.taken
    steps = list(generate_tokens(rt.lm, rt.cache, inp, request.task, request.options, decoder))
    gen, _ = steps[-1]
    assert decoder.taken - taken == len(steps) - 2  # every decode step's but the first
    n = case["max_new_tokens"]
    assert gen.text == case["text"][:n]
    if TASKS[request.task].audio_out:
        want = [layer[:n] for layer in case["audio"]]
        assert [list(layer) for layer in zip(*gen.audio, strict=True)] == want
    assert decoder.loads - loads == 1  # loaded once, then fed back on the device
    if n == case["max_new_tokens"]:
        assert gen.stop_reason == case["stop"]


SAMPLED = [
    # drawn on the device, both rows of an a2a-batch request: loaded once, then fed back
    ("a2a-batch", DecodingOptions(temperature=0.9, top_k=40, top_p=0.95, seed=5, max_new_tokens=5)),
    # top_k 64 at a high temperature: the draws spread over the whole top-k
    ("a2t", DecodingOptions(temperature=3.0, top_k=64, top_p=1.0, seed=-2, max_new_tokens=4)),
    # no top_k: sampled on the host from the step's hidden states, reloaded every step
    ("a2a", DecodingOptions(temperature=1.2, top_k=None, top_p=0.9, seed=6, max_new_tokens=3)),
]


@pytest.mark.parametrize(
    ("task", "opts"),
    [SAMPLED[0], *(pytest.param(*case, marks=SLOW) for case in SAMPLED[1:])],
    ids=[t for t, _ in SAMPLED],
)
def test_sampled_tokens_equal_the_torch_path(device, runtimes, task, opts):
    """A sampling request draws the same ids on the kernel step as on the torch path: both
    use kernels/sampling.py's draw and its (seed, position, stream) uniforms."""
    torch_rt, rt = runtimes
    case = next(c for c in CASES if c["task"] == task)
    request = request_for(dict(case, max_new_tokens=opts.max_new_tokens))
    inp = rt.prepare(request)
    *_, (want, _) = generate_tokens(torch_rt.lm, torch_rt.cache, inp, request.task, opts)
    decoder = rt.kernel_decoder()
    loads = decoder.loads
    *_, (got, _) = generate_tokens(rt.lm, rt.cache, inp, request.task, opts, decoder)
    assert got.text == want.text and got.audio == want.audio
    assert got.steps == opts.max_new_tokens  # every step was drawn and compared
    on_device = opts.top_k is not None
    assert decoder.loads - loads == (1 if on_device else got.steps - 1)
    greedy = generate_tokens(rt.lm, rt.cache, inp, request.task, request.options, decoder)
    *_, (argmax, _) = greedy
    assert (argmax.text, argmax.audio) != (got.text, got.audio)  # it really sampled


@pytest.mark.slow
def test_engine_on_kernels_equals_each_session_alone(device, runtimes):
    """Greedy sessions of three tasks join at different steps beside a sampling one; each gets
    the tokens it gets alone on the torch path. The sampling one's turn is transcribed too: a
    greedy asr row beside the rest, equal to an asr request's on the torch path."""
    torch_rt, rt = runtimes
    sampling = DecodingOptions(temperature=0.8, top_k=40, max_new_tokens=5, seed=3)
    plan = [
        (Task.A2A, clip("q_capital.wav", 1.5), DecodingOptions(max_new_tokens=9)),
        (Task.A2T, clip("q_weather.wav", 0.3), sampling),
        (Task.A2A_BATCH, clip("mini_omni_sample_1.wav", 1.2), DecodingOptions(max_new_tokens=6)),
    ]
    alone = [offline(torch_rt, task, pcm, opts) for task, pcm, opts in plan]
    engine = Engine(rt, EngineOptions(max_sessions=3, kernels=True, run_ahead=True)).start()
    try:
        recorders = [Recorder() for _ in plan]
        for (task, pcm, opts), rec in zip(plan, recorders, strict=True):
            options = SessionOptions(task=task, decoding=opts, transcribe=opts is sampling)
            speak(engine.open_session(options, rec), pcm)
        for rec, twin in zip(recorders, alone, strict=True):
            done = rec.wait_for(events.Done)[0]
            assert done.text_tokens == twin.text_tokens and done.steps == twin.steps
            assert done.frames == frames_of(twin)
        transcript = recorders[1].wait_for(events.TranscriptDone)[0]
        limit = DecodingOptions(max_new_tokens=len(transcript.text_tokens))
        assert transcript.text_tokens == offline(torch_rt, Task.ASR, plan[1][1], limit).text_tokens
        assert engine.decoder.loads < engine.steps  # greedy steps were fed back on the device
        assert engine.decoder.taken > 0  # and launched before the host had the last step's ids
    finally:
        engine.stop()


@pytest.mark.gpu
@pytest.mark.timeout(300)  # compiles every step kernel if no earlier test in its worker did
def test_on_gpu_the_engine_captures_before_its_first_caller(runtimes):
    """Every graph the first calls need exists when the engine is built: their ends of turn
    capture no prompt, their first audio no vocoder graph (captures are tens of ms each)."""
    _, rt = runtimes
    engine = Engine(rt, EngineOptions(max_sessions=3, kernels=True))
    prompts, vocoder = engine.decoder.prompts.graphs, rt.vocoder.graphs
    assert prompts and vocoder
    before = (set(prompts), set(vocoder))
    plan = [
        (Task.A2A, clip("q_capital.wav", 1.5), DecodingOptions(max_new_tokens=24)),
        (Task.A2A_BATCH, clip("q_weather.wav", 1.0), DecodingOptions(max_new_tokens=20)),
        (Task.A2A, clip("mini_omni_sample_1.wav", 3.5), DecodingOptions(max_new_tokens=28)),
    ]
    engine.start()
    try:
        recorders = [Recorder() for _ in plan]
        for (task, pcm, opts), rec in zip(plan, recorders, strict=True):
            speak(engine.open_session(SessionOptions(task=task, decoding=opts), rec), pcm)
        for rec in recorders:
            rec.wait_for(events.Done)
    finally:
        engine.stop()
    assert any(rec.of(events.FirstAudio) for rec in recorders)  # the vocoder's graphs ran
    assert (set(prompts), set(vocoder)) == before


@pytest.mark.slow
def test_fused_greedy_tokens_equal_the_reference(device, runtimes, fused):
    """The step on our own products: still the reference implementation's tokens (an
    a2a-batch request: two rows, text and audio)."""
    _, rt = runtimes
    case = dict(PREFIXES[2], max_new_tokens=6)
    request = request_for(case)
    decoder = KernelDecoder(rt.lm, rt.cache, MAX_ROWS, pad_slot=MAX_ROWS, products=fused)
    inp = rt.prepare(request)
    *_, (gen, _) = generate_tokens(rt.lm, rt.cache, inp, request.task, request.options, decoder)
    assert gen.text == case["text"][:6]
    assert [list(layer) for layer in zip(*gen.audio, strict=True)] == [
        layer[:6] for layer in case["audio"]
    ]


def pdl_choices() -> list[bool]:
    """Launching as programmatic dependents, where the GPU can: off, and on."""
    from kernels.triton_support import supports_dependent_launches

    cuda = torch.cuda.is_available()
    return [False, True] if cuda and supports_dependent_launches(torch.device("cuda")) else [False]


@pytest.mark.gpu
@pytest.mark.parametrize("products", STEP_PRODUCT_CHOICES)
@pytest.mark.parametrize("pdl", [False, True], ids=["plain", "pdl"])
def test_on_gpu_graphed_tokens_equal_the_torch_path(runtimes, products, pdl):
    """The captured step (the default on CUDA) against the torch path: fp32 tokens equal over
    longer answers than the interpreter can afford, greedy and drawn on the device; with its
    kernels launched plainly and as programmatic dependents; on either products, or each
    bucket on the kind of step timed fastest."""
    if pdl not in pdl_choices():
        pytest.skip("programmatic dependent launch needs a GPU of sm_90 or later")
    if pdl and products == "auto":
        pytest.skip("auto times its steps with and without pdl itself")
    torch_rt, rt = runtimes
    decoder = KernelDecoder(
        rt.lm, rt.cache, MAX_ROWS, pad_slot=MAX_ROWS, products=products, pdl=pdl
    )
    assert decoder.graphs is not None
    sampling = DecodingOptions(temperature=0.9, top_k=40, top_p=0.95, seed=9, max_new_tokens=48)
    for case in PREFIXES:
        request = request_for(dict(case, max_new_tokens=48))
        inp = rt.prepare(request)
        for opts in (request.options, sampling):
            *_, (want, _) = generate_tokens(torch_rt.lm, torch_rt.cache, inp, request.task, opts)
            *_, (got, _) = generate_tokens(rt.lm, rt.cache, inp, request.task, opts, decoder)
            assert got.text == want.text and got.audio == want.audio


@pytest.mark.gpu
@pytest.mark.parametrize("products", STEP_PRODUCTS)
def test_on_gpu_a_replay_equals_eager_launches(tiny_lm, products):
    """bf16: the CUDA graph replays exactly the launches the eager step makes, and launching
    them as programmatic dependents changes no bit (a kernel reading before its wait would)."""
    lm = tiny_lm(torch.bfloat16, "cuda")
    results = []
    for graphs, pdl in [(graphs, pdl) for pdl in pdl_choices() for graphs in (False, True)]:
        cache = lm.new_cache(4, max_seq=256)
        decoder = KernelDecoder(lm, cache, 3, pad_slot=3, graphs=graphs, products=products, pdl=pdl)
        assert (decoder.graphs is not None) == graphs
        batch = [StepRow(history(Task.A2A, 30, 4, seed=5), [0], GREEDY),
                 StepRow(history(Task.A2A_BATCH, 12, 2, seed=6), [1, 2], GREEDY)]  # fmt: skip
        with torch.inference_mode():
            for _ in range(6):
                hidden, sampled = decoder.run(batch)
                for item, row in zip(batch, (0, 1), strict=True):
                    item.gen.accept(*picked(sampled[row], item.gen))
        results.append((hidden.clone(), cache.k.clone(), [item.gen.audio for item in batch]))
    (h0, k0, a0), *others = results
    for h1, k1, a1 in others:
        assert torch.equal(h0, h1) and torch.equal(k0[:, :3], k1[:, :3]) and a0 == a1


@pytest.mark.gpu
@pytest.mark.parametrize("products", STEP_PRODUCTS)
def test_on_gpu_a_decoder_compiles_its_step_before_its_first(monkeypatch, tiny_lm, products):
    """A KernelDecoder compiles every kernel variant of its step when it is built
    (compile_step_ahead): its first steps, at every bucket, greedy and drawing, compile
    nothing (Triton calls its jit_cache_hook for each launch whose kernel is not compiled).
    Each kernel's compiled variants are forgotten first, so that earlier tests' launches do not
    stand in for the decoder's own (Triton's disk cache, which stays, only saves time)."""
    import importlib

    import triton
    from triton import knobs
    from triton.runtime.jit import JITFunction

    from .compile_check import KERNEL_MODULES

    if not hasattr(triton, "AsyncCompileMode"):
        pytest.skip(f"Triton {triton.__version__} does not compile in the background")
    for name in KERNEL_MODULES:
        for value in vars(importlib.import_module(f"kernels.{name}")).values():
            if isinstance(value, JITFunction):
                value.device_caches.clear()
    lm = tiny_lm(torch.bfloat16, "cuda")
    decoder = KernelDecoder(lm, lm.new_cache(4, max_seq=256), 3, pad_slot=3, graphs=False,
                            products=products)  # fmt: skip
    compiled = []
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda *a, **kw: compiled.append(kw))
    with torch.inference_mode():
        for size in decoder.sizes:
            for drawing in (False, True):
                decoder.step.forward(size, drawing)
    torch.cuda.synchronize()
    assert not compiled


def test_kernels_by_default_on_cuda_only_and_never_when_torch_only(monkeypatch):
    from realtime.decoding.runtime import kernel_step_enabled

    monkeypatch.delenv("REALTIME_TORCH_ONLY", raising=False)
    assert kernel_step_enabled(torch.device("cuda"))
    assert not kernel_step_enabled(torch.device("cpu"))
    monkeypatch.setenv("REALTIME_TORCH_ONLY", "1")
    assert not kernel_step_enabled(torch.device("cuda"))
