"""Compile every Triton kernel for a real GPU target on a machine without one.

The interpreter runs a kernel's Python, not Triton's compiler: a global that is not a
constexpr, a dot under 16 wide or a type the backend cannot lower pass there and fail on a
GPU. Here each launcher runs for real shapes with its kernel launches intercepted, and each
captured launch is compiled (TTIR -> TTGIR -> LLVM -> PTX -> cubin, Triton's bundled ptxas) for
the target, and reported with what its cubin and PTX say about its speed (registers, spilled
stack, 16-byte pipelined copies). Then the step is compiled once more the way an engine on a
GPU does it, through realtime.decoding.gpu.step.compile_step_ahead and Triton's own JIT (told by a
stand-in driver that the GPU is an sm_90 one), and each of its launches is checked to find its
kernel compiled. Run without TRITON_INTERPRET (test_compile.py starts it that way):

    python -m tests.kernels.compile_check [--arch 90] [--sms 132] [--shared 232448]
        [--parts kernel,step,pdl,ahead]
"""

import argparse
import importlib
import os
import re
import subprocess
import tempfile
from functools import partial
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource
from triton.runtime import driver
from triton.runtime.jit import JITFunction

from realtime.decoding.gpu.step import TOKEN_LAYOUT
from realtime.model.config import PRESETS
from realtime.model.lm import rope_cache

try:  # Triton 3.6 and later specialize in C++
    from triton._C.libtriton import native_specialize_impl

    def specialize_value(value, is_const: bool, specialize: bool, align: bool):
        return native_specialize_impl(CUDABackend, value, is_const, specialize, align)
except ImportError:  # 3.4 and 3.5 (what torch 2.8 and 2.9 pin) in Python
    from triton.runtime.jit import create_specialize_impl

    specialize_value = create_specialize_impl(CUDABackend.get_arg_specialization)

# Triton's wheel bundles the CUDA binary tools its compiler uses
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


LAUNCH_OPTIONS = ("num_warps", "num_stages", "launch_pdl")  # compile options, not arguments


def capture_launches(run_launchers) -> list[tuple[JITFunction, dict, dict]]:
    """(kernel, arguments by name, launch options) of every launch run_launchers makes."""
    launches = []

    def intercept(self, *args, grid, warmup, **kwargs):
        bound = dict(zip(self.arg_names, args, strict=False))
        options = {k: kwargs.pop(k) for k in LAUNCH_OPTIONS if k in kwargs}
        launches.append((self, {**bound, **kwargs}, options))

    original = JITFunction.run
    JITFunction.run = intercept
    try:
        run_launchers()
    finally:
        JITFunction.run = original
    return launches


def specialize(fn: JITFunction, args: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attributes) of a launch, as Triton's JIT specializes it: an int
    equal to 1 becomes a constant, ints and pointers divisible by 16 are marked so (which is
    what lets the compiler vectorize loads)."""
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(fn.arg_names, fn.params, strict=True)):
        value = args[name]
        if i in fn.constexprs:
            signature[name], constexprs[(i,)] = "constexpr", value
            continue
        kind, spec = specialize_value(
            value, param.is_const, not param.do_not_specialize,
            not param.do_not_specialize_on_alignment,
        )  # fmt: skip
        signature[name] = kind
        if kind == "constexpr":
            constexprs[(i,)] = spec
        elif isinstance(spec, str):
            attrs[(i,)] = CUDABackend.parse_attr(spec)
    return signature, constexprs, attrs


def compile_for(fn: JITFunction, args: dict, options: dict, arch: int):
    """Compile one captured launch for compute capability `arch` (e.g. 90: sm_90)."""
    signature, constexprs, attrs = specialize(fn, args)
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


KERNEL_MODULES = (
    "add_rmsnorm",
    "decode_attention",
    "embed_mean",
    "feedback",
    "gemv",
    "head_argmax",
    "head_sample",
    "qkv_rope_cache",
    "swiglu",
)


def run_launchers(dtype: torch.dtype) -> None:
    """Every launcher once at the released shapes, for 8 rows. The tensors stay on the CPU and
    are never read: each module is told its kernel runs, and the launches are intercepted."""
    mods = {name: importlib.import_module(f"kernels.{name}") for name in KERNEL_MODULES}
    for module in mods.values():
        module.runs_kernel = lambda *tensors: True  # this process only does this

    def empty(*shape, dt=dtype):
        return torch.empty(shape, dtype=dt)  # lazily allocated: the table costs nothing

    cfg = PRESETS["mini-omni"].model
    C, hs, groups, B = cfg.n_embd, cfg.head_size, cfg.n_query_groups, 8
    table = empty(cfg.padded_vocab_size, C)
    ids = empty(B, 1, TOKEN_LAYOUT.streams, dt=torch.int64)
    mods["embed_mean"].embed_mean(ids, table, empty(B, 1, C), empty(B, 1, dt=torch.bool))
    mods["add_rmsnorm"].add_rmsnorm(empty(B, C), empty(B, C), empty(C), cfg.norm_eps)
    cos, sin = rope_cache(16, hs, cfg.rope_base)
    cache = [empty(cfg.n_layer, B, groups, cfg.block_size, hs) for _ in "kv"]
    positions, slots = empty(B, 1, dt=torch.int64), empty(B, dt=torch.int64)
    qkv = empty(B, 1, (cfg.n_head + 2 * groups) * hs)
    mods["qkv_rope_cache"].qkv_rope_cache(qkv, cos, sin, positions, slots, *cache, 3)
    lengths = empty(B, dt=torch.int64)
    attention = mods["decode_attention"]
    attention.decode_attention(empty(B, cfg.n_head, hs), *cache, 3, slots, lengths)
    attention.decode_attention_qkv(qkv[:, 0], cos, sin, *cache, 3, slots, positions[:, 0])
    mods["swiglu"].swiglu(empty(B, 2 * cfg.intermediate_size))
    gemv, hidden = mods["gemv"], cfg.intermediate_size
    split = gemv.split_for(hidden, C, torch.device("cpu"))
    down, _ = gemv.gemv(empty(B, hidden), empty(C, hidden), split_k=split)  # fp32 slices
    norm = gemv.Norm(empty(C), empty(B, C), cfg.norm_eps)
    gemv.gemv(down, empty(2 * hidden, C), norm=norm, swiglu=True)  # summed, added, normed, SwiGLU
    gemv.gemv(empty(B, C), empty(3 * C, C), empty(3 * C), norm=gemv.Norm(empty(C), None, 1e-6))
    gemv.gemv(empty(B, C), empty(3 * C, C), empty(3 * C))  # the plain product with its bias
    gemv.gemv(empty(B, C), empty(C, C), tiles=gemv.Tiles(prefetch=True))  # L2 first, no PDL
    mods["add_rmsnorm"].add_rmsnorm(down, None, empty(C), cfg.norm_eps)
    mods["head_argmax"].head_argmax(empty(B, C), table, TOKEN_LAYOUT, empty(B, dt=torch.bool))
    sample = mods["head_sample"]
    kinds = (torch.bool, torch.int64, torch.float32, torch.float32, torch.int64, torch.int64)
    rows = sample.SamplingRows(*(empty(B, dt=kind) for kind in kinds))
    sample.head_sample(
        empty(B, C), table, TOKEN_LAYOUT, empty(B, dt=torch.bool), rows, empty(B, table.shape[0])
    )
    flags = [empty(B, dt=torch.bool) for _ in range(4)]
    mods["feedback"].feedback(empty(B, TOKEN_LAYOUT.streams, dt=torch.int64), *flags, TOKEN_LAYOUT)


def run_step(dtype: torch.dtype, pdl: bool = False, each_step=None) -> None:
    """realtime.decoding.gpu.step's whole decode step at the released shapes, on either products,
    once per batch-size bucket of a 32-session engine, on meta tensors (nothing is allocated
    or computed): its launches carry the constexprs the engine really compiles. `pdl`: as
    programmatic dependents (KernelStep(pdl=True), which a GPU of sm_90 or later takes).
    `each_step(step, sizes)`, if given, runs each products' step instead of
    kernel_step.every_variant."""
    from realtime.decoding.gpu.step import KernelStep, buckets, every_variant
    from realtime.model.lm import OmniLM

    for name in KERNEL_MODULES:
        importlib.import_module(f"kernels.{name}").runs_kernel = lambda *tensors: True
    cfg = PRESETS["mini-omni"].model
    with torch.device("meta"):
        lm = OmniLM(cfg).to(dtype)
        lm.cos, lm.sin = (t.to("meta") for t in rope_cache(cfg.block_size, cfg.head_size, 10))
        lm.fuse()
        rows = 64
        for products in ("cublas", "fused"):
            cache = lm.new_cache(rows + 1)
            step = KernelStep(lm, cache, rows, pad_slot=rows, products=products, pdl=pdl)
            (each_step or every_variant)(step, buckets(rows))


def distinct(launches):
    """One launch per kernel and specialization (constexprs, alignment) and options: the rest
    does not change the compiled code."""
    seen = {}
    for fn, args, options in launches:
        signature, constexprs, attrs = specialize(fn, args)
        key = (fn.__name__, str(signature), str(constexprs), str(attrs),
               tuple(sorted(options.items())))  # fmt: skip
        seen.setdefault(key, (fn, args, options))
    return list(seen.values())


def describe(kernel) -> str:
    """What decides a memory-bound kernel's speed and shows without a GPU, from its cubin and
    PTX: registers and stack per thread (stack: spilled registers), and whether it copies 16
    bytes a thread into shared memory (cp.async, how pipelined loops load)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = subprocess.run(
            [CUOBJDUMP, "--dump-resource-usage", cubin.name],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    ptx = kernel.asm["ptx"]
    wide = re.search(r"cp\.async\.c[ag]\.shared\.global[^;]*, 0x10", ptx)
    shared = kernel.metadata.shared  # bytes of shared memory a program needs
    copies = f"cp16={'yes' if wide else 'no'}"
    return f"regs={regs} stack={stack} shared={shared} {copies} {dependent_launch(ptx)}"


def dependent_launch(ptx: str) -> str:
    """How a kernel takes part in programmatic dependent launch, from its PTX: `pdl=` none
    (no griddepcontrol), ordered (it waits for the launch before it ahead of its first global
    load, store or copy, and lets the next launch start only after waiting) or early (some
    access comes first: a race); `l2pf=` whether it prefetches into L2 before waiting (without
    a wait: at all)."""
    wait = ptx.find("griddepcontrol.wait")
    if wait < 0:
        return f"pdl=none l2pf={'yes' if 'prefetch.global.L2' in ptx else 'no'}"
    access = re.search(r"\b(ld|st|cp\.async|atom|red)(\.[a-z0-9:]+)*\.global", ptx)
    launch = ptx.find("griddepcontrol.launch_dependents")
    ordered = (access is None or wait < access.start()) and wait < launch
    prefetch = 0 <= ptx.find("prefetch.global.L2") < wait
    return f"pdl={'ordered' if ordered else 'early'} l2pf={'yes' if prefetch else 'no'}"


class StandInDriver:
    """What Triton's JIT asks of the active driver to compile a launch for `arch`, with no GPU
    (nothing is launched: a launch would ask for more)."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


def check_compile_ahead(dtype: torch.dtype, arch: int, pdl: bool = False) -> str:
    """The step compiled ahead as an engine compiles it (realtime.decoding.gpu.step's
    compile_step_ahead, each products' step at every bucket) through Triton's JIT for `arch`;
    then every launch of the step again, as warm-ups one at a time, counting those that
    compile (Triton calls its jit_cache_hook for each launch whose kernel is not compiled)."""
    if not hasattr(triton, "AsyncCompileMode"):  # what compile_ahead needs (3.5 and later)
        return f"skipped: Triton {triton.__version__} does not compile in the background"
    from triton import knobs

    from realtime.decoding.gpu.step import compile_step_ahead

    launches = capture_launches(partial(run_step, dtype, pdl))
    previous = driver._active  # None until a launch needs one: none on this machine
    driver.set_active(StandInDriver(arch))
    variants, misses = [], []
    hook = knobs.runtime.jit_cache_hook
    try:
        run_step(dtype, pdl, lambda step, sizes: variants.append(compile_step_ahead([step], sizes)))
        knobs.runtime.jit_cache_hook = lambda *args, **kwargs: misses.append(args) or False
        for fn, kernel_args, options in launches:
            fn.run(grid=None, warmup=True, **kernel_args, **options)
    finally:
        knobs.runtime.jit_cache_hook = hook
        driver.set_active(previous)
    unique = len(distinct(launches))
    return f"variants={sum(variants)} distinct={unique} compiled_at_launch={len(misses)}"


PARTS = ("kernel", "step", "pdl", "ahead")
PDL_ARCH = 90  # programmatic dependent launches: sm_90 and later (KernelStep refuses them below)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, 90: H100")
    parser.add_argument(
        "--parts", default=",".join(PARTS),
        help="what to compile: kernel (each launcher alone), step (the decode step), pdl (the"
        " step as programmatic dependents, sm_90 and later), ahead (compile_step_ahead)",
    )  # fmt: skip
    parser.add_argument(
        "--sms", type=int, default=None,
        help="the GPU's SM count, which sizes the launches (default: kernels/gemv.py's"
        " SMS_FALLBACK, an H100's); fewer SMs give wider products' tiles",
    )  # fmt: skip
    parser.add_argument(
        "--shared", type=int, default=None,
        help="bytes of shared memory the GPU gives a program, which bounds the products'"
        " pipelines (default: kernels/gemv.py's SHARED_FALLBACK, an H100's)",
    )  # fmt: skip
    args = parser.parse_args()
    args.parts = args.parts.split(",")
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    return args


def main() -> None:
    args = parse_args()
    gemv = importlib.import_module("kernels.gemv")  # its stand-ins for what a GPU would say
    if args.sms is not None:
        gemv.SMS_FALLBACK = args.sms
    if args.shared is not None:
        gemv.SHARED_FALLBACK = args.shared
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "unset TRITON_INTERPRET to compile"
    pdl_too = args.arch >= PDL_ARCH
    failed = 0
    both = (torch.bfloat16, torch.float32)
    runners = (  # the step launched as programmatic dependents: in the GPU engine's dtype
        ("kernel", run_launchers, both),
        ("step", run_step, both),
        ("pdl", partial(run_step, pdl=True), (torch.bfloat16,) if pdl_too else ()),
    )
    for what, runner, dtypes in runners:
        for dtype in dtypes if what in args.parts else ():
            launches = capture_launches(lambda dtype=dtype, runner=runner: runner(dtype))
            for fn, kernel_args, options in distinct(launches):
                try:
                    facts = describe(compile_for(fn, kernel_args, options, args.arch))
                    print(f"ok {what:6} sm_{args.arch} {str(dtype):16} {fn.__name__} {facts}")
                except Exception as exc:  # report every kernel, then fail
                    failed += 1
                    print(f"FAILED {what:6} sm_{args.arch} {str(dtype):16} {fn.__name__}: {exc}")
    for pdl in (False, True) if "ahead" in args.parts else ():
        if pdl and not pdl_too:
            continue
        facts = check_compile_ahead(torch.bfloat16, args.arch, pdl)
        print(f"{'skip' if facts.startswith('skipped') else 'ok'} ahead{'+pdl' if pdl else ''} "
              f"sm_{args.arch} torch.bfloat16 step {facts}")  # fmt: skip
    if failed:
        raise SystemExit(f"{failed} kernel(s) did not compile")


if __name__ == "__main__":
    main()
