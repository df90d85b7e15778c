"""The contenders of benchmarks/decode_step.py and the measurements it makes with them.

Every contender runs one decode step of `batch` rows, each row at position `context` of its own
cache row (positions do not advance, so every timed step costs the same), and picks greedy ids
from the text head (while the text runs) and the 7 audio heads.
"""

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.random_model import temporary_model
from kernels.triton_support import compile_ahead
from realtime.audio.encoder import encode_chunked
from realtime.audio.io import load_audio
from realtime.audio.vocoder import VocoderStream
from realtime.decoding.generate import (
    Generation,
    PrefillInput,
    StepRow,
    decode_step,
    generate_tokens,
)
from realtime.decoding.gpu.decoder import KernelDecoder, step_kinds
from realtime.decoding.gpu.step import KernelStep, StepGraphs, every_variant
from realtime.decoding.options import DecodingOptions
from realtime.decoding.runtime import MAX_ROWS, Runtime
from realtime.device.cuda_graphs import capture
from realtime.model import checkpoint, tokens
from realtime.model.lm import KVCache, OmniLM, apply_rope
from realtime.model.prompts import Task, build_prompt

WARMUP_STEPS = 5


def load_runtime(model: str | None, device: torch.device, preset: str) -> Runtime:
    """A bf16 Runtime decoding on the kernels, from `model` or a fresh random `preset` dir."""
    files = checkpoint.resolve(model or temporary_model(preset), offline=True)
    return Runtime(files, str(device), torch.bfloat16, kernels=True)


def step_inputs(lm: OmniLM, batch: int, context: int):
    """A cache whose rows 0..batch-1 hold `context` random positions (slot `batch` pads), and
    random valid ids (batch, 8) at position `context`."""
    cache = lm.new_cache(batch + 1)
    g = torch.Generator(device=cache.k.device).manual_seed(0)
    for buffer in (cache.k, cache.v):
        shape = (*buffer.shape[:3], context, buffer.shape[4])
        buffer[:, :, :, :context] = torch.randn(shape, generator=g, device=buffer.device)
    dev = cache.k.device
    local = torch.randint(0, tokens.CODEBOOK_SIZE, (batch, tokens.AUDIO_LAYERS), generator=g,
                          device=dev)  # fmt: skip
    offsets = [tokens.audio_offset(i) for i in range(tokens.AUDIO_LAYERS)]
    audio = local + torch.tensor(offsets, device=dev)  # layer-shifted
    text = torch.randint(0, tokens.TEXT_VOCAB, (batch, 1), generator=g, device=dev)
    ids = torch.cat((audio, text), dim=1)
    positions = torch.full((batch,), context, device=dev)
    return cache, ids, positions, torch.arange(batch, device=dev)


def step_bytes(lm: OmniLM, batch: int, context: int, text_running: bool) -> int:
    """HBM bytes one step must move at least: every weight once (the tied table's text rows
    only while the text runs), each row's 8 embedding rows, its keys and values."""
    cfg, size = lm.cfg, lm.lm_head.weight.element_size()
    table = lm.lm_head.weight
    weights = sum(p.numel() for p in lm.transformer.h.parameters())
    weights += lm.transformer.ln_f.weight.numel()
    head_rows = table.shape[0] - (0 if text_running else tokens.TEXT_VOCAB_PADDED)
    weights += head_rows * cfg.n_embd
    embeddings = batch * tokens.STREAMS * cfg.n_embd
    kv = batch * cfg.n_layer * 2 * cfg.n_query_groups * (context + 1) * cfg.head_size
    return (weights + embeddings + kv) * size


def eager_step(lm: OmniLM, cache: KVCache, ids, positions, slots, text_running: bool):
    """The engine's torch path: the model's decode step, then each head's argmax."""
    hidden = decode_step(lm, cache, ids, positions, slots)
    audio = lm.audio_logits(hidden).argmax(dim=-1)
    text = lm.text_logits(hidden).argmax(dim=-1) if text_running else None
    return audio, text


def static_step(lm: OmniLM, k_cache, v_cache, ids, positions, slots, length: int, text: bool):
    """The same step with static shapes for torch.compile: attention over the first `length`
    cache positions under a mask (no host sync), the cache written with index_put."""
    cfg = lm.cfg
    B, q_per_kv = ids.shape[0], cfg.n_head // cfg.n_query_groups
    x = lm.embed(ids[:, None])  # (B, 1, C)
    cos, sin = lm.cos[positions][:, None, None], lm.sin[positions][:, None, None]  # (B,1,1,hs)
    keep = torch.arange(length, device=ids.device) <= positions[:, None]  # (B, length)
    for layer, block in enumerate(lm.transformer.h):
        attn = block.attn
        qkv = F.linear(block.norm_1(x), attn.attn.weight, attn.attn.bias)
        qkv = qkv.view(B, 1, cfg.n_query_groups, q_per_kv + 2, cfg.head_size)
        qkv = qkv.permute(0, 2, 3, 1, 4)  # (B, groups, q_per_kv + 2, 1, hs)
        qk = apply_rope(qkv[:, :, : q_per_kv + 1].reshape(B, -1, 1, cfg.head_size), cos, sin)
        qk = qk.view(B, cfg.n_query_groups, q_per_kv + 1, 1, cfg.head_size)
        k_cache[layer, slots, :, positions] = qk[:, :, q_per_kv, 0]
        v_cache[layer, slots, :, positions] = qkv[:, :, q_per_kv + 1, 0]
        y = F.scaled_dot_product_attention(
            qk[:, :, :q_per_kv].reshape(B, cfg.n_head, 1, cfg.head_size),
            k_cache[layer, slots, :, :length],
            v_cache[layer, slots, :, :length],
            attn_mask=keep[:, None, None, :],
            enable_gqa=True,
        )  # (B, n_head, 1, hs)
        x = x + F.linear(y.reshape(B, 1, -1), attn.proj.weight)
        x = x + block.mlp(block.norm_2(x))
    hidden = lm.transformer.ln_f(x)[:, 0]
    audio = lm.audio_logits(hidden).argmax(dim=-1)
    return audio, lm.text_logits(hidden).argmax(dim=-1) if text else None


def kernel_step(
    lm: OmniLM,
    cache: KVCache,
    ids,
    positions,
    slots,
    text_running: bool,
    products: str,
    pdl: bool = False,
):
    """A KernelStep whose rows stay at their positions (advance 0) and keep their text on."""
    batch = ids.shape[0]
    step = KernelStep(lm, cache, batch, pad_slot=batch, products=products, pdl=pdl)
    step.ids.copy_(ids)
    step.positions.copy_(positions)
    step.slots.copy_(slots)
    step.no_text.fill_(not text_running)
    step.speaks.fill_(True)  # audio_out stays off, so text_ended never turns on
    return step


def sync_for(device: torch.device):
    """What waits for everything queued on `device`: the CUDA stream's work, or nothing on a
    CPU (its ops run to their end)."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def wall_ms(fn, steps: int, sync) -> float:
    """Mean wall-clock milliseconds per call over `steps` back-to-back calls (launch cost
    included), after a warm-up."""
    for _ in range(WARMUP_STEPS):
        fn()
    sync()
    began = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - began) * 1000 / max(steps, 1)


def time_contenders(
    lm: OmniLM, batch: int, context: int, text_running: bool, steps: int, compile: bool
) -> dict:
    cache, ids, positions, slots = step_inputs(lm, batch, context)
    cuda = cache.k.is_cuda
    sync = sync_for(cache.k.device)
    nbytes = step_bytes(lm, batch, context, text_running)
    out = {}
    with torch.inference_mode():
        out["eager"] = wall_ms(
            lambda: eager_step(lm, cache, ids, positions, slots, text_running), steps, sync
        )
        out["compiled"] = None
        if compile:
            fn = torch.compile(static_step, dynamic=False)
            args = (lm, cache.k, cache.v, ids, positions, slots, context + 1, text_running)
            out["compiled"] = wall_ms(lambda: fn(*args), steps, sync)
            if cuda:  # its launches captured in a CUDA graph too: the best torch can do
                out["compiled+graph"] = graph_ms(lambda: fn(*args), steps)
        # "kernels", "graph", ...: on cuBLAS's products; "...[fused]": ours; "...[+pdl]",
        # "...[fused+pdl]": launched as programmatic dependents
        for products, dependent in step_kinds(cache.k.device):
            step = kernel_step(lm, cache, ids, positions, slots, text_running, products, dependent)
            tag = ("" if products == "cublas" else products) + ("+pdl" if dependent else "")
            tag = f"[{tag}]" if tag else ""
            out |= {name + tag: ms for name, ms in time_kernel_step(step, steps, sync).items()}
            if text_running and not dependent:  # (the decoder's rows run their own text)
                loop = decoder_ms(lm, batch, context, products, steps)
                out |= {name + tag: ms for name, ms in loop.items()}
    contenders = {
        name: {"ms": ms, "GB_per_s": None if ms is None else nbytes / ms / 1e6}
        for name, ms in out.items()
    }
    return dict(batch=batch, context=context, text_running=text_running, bytes=nbytes,
                contenders=contenders)  # fmt: skip


def compile_steps_ahead(lm: OmniLM, batches: list[int], kinds: list | None = None) -> None:
    """Compile every kernel variant of the steps of `kinds` (default: step_kinds) at `batches`
    at once, on a thread per CPU (kernels/triton_support.compile_ahead), instead of one at a
    time at their first launches."""

    def every_step():
        for batch in batches:
            cache = lm.new_cache(batch + 1)
            for products, pdl in kinds or step_kinds(cache.k.device):
                step = KernelStep(lm, cache, batch, pad_slot=batch, products=products, pdl=pdl)
                every_variant(step, [batch])

    began = time.perf_counter()
    with torch.inference_mode():
        variants = compile_ahead(every_step)
    if variants:
        print(f"compiled {variants} kernel variants ahead in {time.perf_counter() - began:.1f} s")


def time_kernel_step(step: KernelStep, steps: int, sync) -> dict[str, float]:
    """Milliseconds per step of `step`: launched, and (on CUDA) replayed greedy and sampling."""
    batch = step.max_rows
    out = {"kernels": wall_ms(lambda: step.forward(batch), steps, sync)}
    if step.cache.k.is_cuda:
        graphs = StepGraphs({batch: step})
        out["graph"] = wall_ms(lambda: graphs.replay(batch, False), steps, sync)
        # every row drawing top-k 40 / temperature 0.9 / top-p 0.95 on the device
        step.sampling.fill_(True), step.top_k.fill_(40)
        step.temperature.fill_(0.9), step.top_p.fill_(0.95)
        out["graph+sampling"] = wall_ms(lambda: graphs.replay(batch, True), steps, sync)
    return out


def decoder_ms(lm: OmniLM, batch: int, context: int, products: str, steps: int) -> dict:
    """Milliseconds per step as the engine's loop sees them: KernelDecoder.decode for `batch`
    a2a requests (one row each, greedy, `context` positions into their caches), then the
    host's Generation.accept of each request's ids; with each step launched only after the
    host took the last one's ids ("decoder"), and launched before it ("decoder+ahead").
    A request the random model stops (_eoa) starts over: its batch is loaded again."""
    cache = lm.new_cache(batch + 1)
    if cache.max_seq < context + WARMUP_STEPS + steps + 2:
        raise ValueError(f"{steps} steps from position {context} do not fit the cache")
    decoder = KernelDecoder(lm, cache, batch, pad_slot=batch, products=products)
    g = torch.Generator().manual_seed(0)

    def request(slot: int) -> StepRow:
        gen = Generation(Task.A2A, context, max_steps=cache.max_seq - context)
        audio = torch.randint(0, tokens.CODEBOOK_SIZE, (tokens.AUDIO_LAYERS,), generator=g)
        gen.accept(int(torch.randint(0, tokens.TEXT_VOCAB, (1,), generator=g)), audio.tolist())
        return StepRow(gen, [slot], DecodingOptions())

    rows: list[StepRow] = []  # (made anew for each way below)

    def step():
        for i, (item, ids) in enumerate(zip(rows, decoder.decode(rows), strict=True)):
            if item.gen.accept(*ids).done:
                rows[i] = request(i)

    out, sync = {}, sync_for(cache.k.device)
    for run_ahead in (False, True):
        decoder.run_ahead = run_ahead
        rows[:] = [request(slot) for slot in range(batch)]  # back to `context`
        out["decoder+ahead" if run_ahead else "decoder"] = wall_ms(step, steps, sync)
    return out


def graph_ms(fn, steps: int) -> float:
    """fn captured once in a CUDA graph, then the mean of `steps` replays."""
    graph, _ = capture(fn, warmups=WARMUP_STEPS)
    return wall_ms(graph.replay, steps, torch.cuda.synchronize)


def end_of_turn_to_first_audio(
    runtime: Runtime, clip: Path, repeats: int, products: str = "cublas", run_ahead: bool = True
) -> dict:
    """A 2 s utterance: encode (chunked), then prefill, decode on the kernel step (with
    `products`, each step launched before the host took the last one's ids or not) and vocode
    until the first PCM sample. Medians over `repeats` runs after one warm-up."""
    audio = load_audio(clip)[: 2 * tokens.INPUT_SAMPLE_RATE_HZ]
    decoder = runtime.kernel_decoder()
    if products != decoder.step.products:
        decoder = KernelDecoder(runtime.lm, runtime.cache, MAX_ROWS, MAX_ROWS, products=products)
    decoder.run_ahead = run_ahead
    sync = sync_for(runtime.device)
    options = DecodingOptions(max_new_tokens=64)
    runs = []
    for _ in range(repeats + 1):
        with torch.inference_mode():
            sync()
            began = time.perf_counter()
            features = encode_chunked(runtime.whisper, audio)
            sync()
            encoded = time.perf_counter()
            prompt = build_prompt(Task.A2A, audio_frames=features.shape[0])
            inp = PrefillInput(prompt, runtime.lm.adapt(features))
            stream = VocoderStream(device=runtime.device)
            steps = generate_tokens(runtime.lm, runtime.cache, inp, Task.A2A, options, decoder)
            for gen, out in steps:
                taken = gen.steps
                if out.frame is not None:
                    stream.push(torch.tensor([out.frame]))
                    if runtime.vocoder.step([stream])[0].size:
                        break
            steps.close()
            done = time.perf_counter()
        runs.append((encoded - began, done - encoded, taken))
    runs = runs[1:]
    return {
        "total_ms": 1000 * float(np.median([e + d for e, d, _ in runs])),
        "encode_ms": 1000 * float(np.median([e for e, _, _ in runs])),
        "after_encode_ms": 1000 * float(np.median([d for _, d, _ in runs])),
        "steps": runs[0][2],
        "runs": len(runs),
    }
