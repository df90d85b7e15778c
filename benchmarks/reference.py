"""Run the Mini-Omni reference implementation (gpt-omni/mini-omni) on a local model directory.

The reference is imported from a checkout given with --reference-dir, never copied. Its model is
loaded the way its `inference.load_model` does (fp32, litgpt `GPT` under a Lightning Fabric, a
strict state-dict load), except that whisper and SNAC come from the directory's `small.pt` and
`snac/` instead of the hub names it hard-codes. Each task runs through the reference's own prompt
builder and `generate_*` loop with the arguments `inference.py` passes (temperature 0.9, top_k 1:
greedy), bounded by `max_returned_tokens = T + max_new_tokens`, so at most max_new_tokens steps
(the step sampled from the prompt included).

    python benchmarks/reference.py --reference-dir REF --model DIR \
        run a2a --clip tests/data/q_capital.wav --max-new-tokens 64
    python benchmarks/reference.py --reference-dir REF --model DIR \
        goldens tests/golden/reference_tokens.json

This file imports nothing from `realtime`: it runs in an environment that has the reference's
dependencies (lightning, openai-whisper, snac, tokenizers). Speed benchmarks reuse
`load_reference`, `task_inputs`, `kv_cache`, `prompt_forward` and `step_forward` to time the
reference's per-step forward.
"""

import argparse
import contextlib
import hashlib
import importlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType

import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"

AUDIO_LAYERS = 7  # the reference's input_ids: 7 audio streams, then the text stream

# What inference.py passes to every generate_* call.
TEMPERATURE = 0.9
TOP_K = 1  # greedy: one candidate survives, so multinomial sampling is deterministic


@dataclass(frozen=True)
class Recipe:
    """How inference.py runs one task: names of its functions and the arguments it passes."""

    prompt: str  # inference.py function building the prompt ids
    specials: tuple[str, str] | None  # get_input_ids_whisper's (special_token_a, special_token_t)
    generate: str  # litgpt.generate.base loop
    step: str  # next_token_* function that loop calls once per step
    labels: tuple[str, ...]  # the task names inference.py passes to the loop, one per row
    step_labels: tuple[str, ...] | None  # the ones the loop passes to its first step
    audio_in: bool
    audio_out: bool

    @property
    def rows(self) -> int:
        return len(self.labels)


_WHISPER = "get_input_ids_whisper"
RECIPES: dict[str, Recipe] = {
    "a2a": Recipe(
        prompt=_WHISPER,
        specials=None,
        generate="generate_AA",
        step="next_token_A1T2",
        labels=("A1T2",),
        step_labels=("A1T2",),
        audio_in=True,
        audio_out=True,
    ),
    "a2t": Recipe(
        prompt=_WHISPER,
        specials=("_pad_a", "_answer_t"),
        generate="generate_AT",
        step="next_token_A1T1",
        labels=("AT",),
        step_labels=("AT",),
        audio_in=True,
        audio_out=False,
    ),
    "asr": Recipe(
        prompt=_WHISPER,
        specials=("_pad_a", "_asr"),
        generate="generate_ASR",
        step="next_token_A1T1",
        labels=("A1T1",),
        step_labels=("asr",),
        audio_in=True,
        audio_out=False,
    ),
    "t2a": Recipe(
        prompt="get_input_ids_TA",
        specials=None,
        generate="generate_TA",
        step="next_token_A1T2",
        labels=("T1A2",),
        step_labels=None,
        audio_in=False,
        audio_out=True,
    ),
    "t2t": Recipe(
        prompt="get_input_ids_TT",
        specials=None,
        generate="generate_TT",
        step="next_token_A1T1",
        labels=("T1T2",),
        step_labels=None,
        audio_in=False,
        audio_out=False,
    ),
    # The reference server's mode: row 0 is the a2a prompt and speaks, row 1 the a2t prompt and
    # chooses the text; generate_TA_BATCH feeds row 1 _pad_a on every audio stream.
    "a2a-batch": Recipe(
        prompt="get_input_ids_whisper_ATBatch",
        specials=None,
        generate="generate_TA_BATCH",
        step="next_token_batch",
        labels=("A1A2", "A1T2"),
        step_labels=("A1T2", "A1T2"),
        audio_in=True,
        audio_out=True,
    ),
}


@dataclass
class Reference:
    """The reference's modules and its loaded models."""

    inference: ModuleType  # inference.py: prompt builders, load_audio, token constants
    generation: ModuleType  # litgpt/generate/base.py
    snac_utils: ModuleType  # utils/snac_utils.py
    fabric: object
    model: torch.nn.Module  # litgpt GPT wrapped by fabric.setup
    tokenizer: object  # litgpt Tokenizer
    whisper: torch.nn.Module
    snac: torch.nn.Module
    device: str


@dataclass
class Inputs:
    """A prompt as the reference builds it."""

    input_ids: list[torch.Tensor]  # 8 streams (7 audio, then text), each (rows, T)
    audio_features: torch.Tensor | None  # (rows, T_audio, whisper width) encoder output
    audio_frames: int | None  # T_audio: load_audio's int(ms / 20) + 1
    text_ids: list[int] | None  # tokenizer ids of a text input

    @property
    def prompt_length(self) -> int:
        return self.input_ids[0].shape[1]


@dataclass
class Run:
    """One task's tokens, raw as the reference's generate_* loop records them."""

    task: str
    prompt_length: int
    text: list[int]  # text stream, one id per step
    audio: list[list[int]] | None  # 7 audio streams (layer-local ids), one id per step each
    frames: list[list[int]] | None  # 7-code frames in reconscruct_snac's order
    answer_ids: list[int]  # the text ids inference.py decodes (cut at _eot for audio tasks)
    answer: str  # the reference tokenizer's decoding of answer_ids, stripped
    steps: int
    stop: str  # "end of audio", "end of text" or "length"


def import_reference(reference_dir: Path) -> tuple[ModuleType, ModuleType, ModuleType]:
    """Put a gpt-omni/mini-omni checkout first on sys.path and import the modules we drive."""
    if not (reference_dir / "inference.py").is_file():
        raise SystemExit(f"{reference_dir} is not a gpt-omni/mini-omni checkout (no inference.py)")
    sys.path.insert(0, str(reference_dir.resolve()))
    with contextlib.redirect_stdout(sys.stderr):
        modules = [
            importlib.import_module(name)
            for name in ("inference", "litgpt.generate.base", "utils.snac_utils")
        ]
    return modules[0], modules[1], modules[2]


def load_reference(reference_dir: Path, model_dir: Path, device: str = "cpu") -> Reference:
    """Load the reference's models from `model_dir`, following inference.load_model step by step
    (the hub names it hard-codes replaced by the directory's small.pt and snac/)."""
    inference, generation, snac_utils = import_reference(reference_dir)
    import lightning
    import whisper
    from lightning.fabric.utilities.load import _lazy_load
    from litgpt import Tokenizer
    from litgpt.model import GPT, Config
    from snac import SNAC

    with contextlib.redirect_stdout(sys.stderr):  # GPT() prints which adapter it builds
        snac = SNAC.from_pretrained(str(model_dir / "snac")).eval().to(device)
        whisper_model = whisper.load_model(str(model_dir / "small.pt"), device=device)
        tokenizer = Tokenizer(model_dir)
        accelerator = "cuda" if device.startswith("cuda") else "cpu"
        fabric = lightning.Fabric(accelerator=accelerator, devices=1, strategy="auto")
        config = Config.from_file(model_dir / "model_config.yaml")
        config.post_adapter = False
        with fabric.init_module(empty_init=False):
            model = GPT(config)
        model = fabric.setup(model)
        model.load_state_dict(_lazy_load(model_dir / "lit_model.pth"), strict=True)
        model.to(device).eval()
    return Reference(
        inference, generation, snac_utils, fabric, model, tokenizer, whisper_model, snac, device
    )


@contextlib.contextmanager
def _audio_reader() -> Iterator[None]:
    """whisper.load_audio decodes with ffmpeg; without it, read 16 kHz mono WAVs with soundfile
    (the same float32 samples: int16 / 32768)."""
    if shutil.which("ffmpeg"):
        yield
        return
    import whisper

    def read_wav(path: str, sr: int = whisper.audio.SAMPLE_RATE):
        samples, rate = sf.read(path, dtype="float32")
        if rate != sr or samples.ndim != 1:
            raise SystemExit(f"{path}: without ffmpeg only mono {sr} Hz WAVs can be read")
        return samples

    original, whisper.load_audio = whisper.load_audio, read_wav
    try:
        yield
    finally:
        whisper.load_audio = original


def task_inputs(
    ref: Reference, task: str, clip: Path | None = None, text: str | None = None
) -> Inputs:
    """Build `task`'s prompt with the reference's functions: whisper features from its load_audio
    (30 s log-mel, the whole encoder, first int(ms / 20) + 1 frames) for speech input."""
    recipe, inf = RECIPES[task], ref.inference
    build = getattr(inf, recipe.prompt)
    if not recipe.audio_in:
        if text is None:
            raise SystemExit(f"{task} needs --text")
        ids = ref.tokenizer.encode(text).tolist()
        return Inputs(build(text, ref.tokenizer), None, None, ids)
    if clip is None:
        raise SystemExit(f"{task} needs --clip")
    with _audio_reader():
        mel, frames = inf.load_audio(str(clip))
    specials = {}
    if recipe.specials:
        specials = dict(
            zip(
                ("special_token_a", "special_token_t"),
                (getattr(inf, name) for name in recipe.specials),
                strict=True,
            )
        )
    features, input_ids = build(mel, frames, ref.whisper, ref.device, **specials)
    return Inputs(input_ids, features, frames, None)


@contextlib.contextmanager
def kv_cache(ref: Reference, rows: int) -> Iterator[None]:
    """The reference's cache around one request: set_kv_cache before, clear_kv_cache after."""
    with ref.fabric.init_tensor():
        ref.model.set_kv_cache(batch_size=rows)
    try:
        yield
    finally:
        ref.model.clear_kv_cache()


def _decoding_kwargs(ref: Reference) -> dict:
    inf = ref.inference
    return dict(
        temperature=TEMPERATURE,
        top_k=TOP_K,
        eos_id_a=inf._eoa,
        eos_id_t=inf._eot,
        pad_id_t=inf._pad_t,
        shift=inf.padded_text_vocabsize,
        include_prompt=True,
        generate_text=True,
    )


def run_task(ref: Reference, task: str, inputs: Inputs, max_new_tokens: int) -> Run:
    """Decode `inputs` with the reference's generate_* loop for at most max_new_tokens steps."""
    recipe = RECIPES[task]
    generate = getattr(ref.generation, recipe.generate)
    lengths = [inputs.audio_frames] * recipe.rows if recipe.audio_in else None
    with kv_cache(ref, recipe.rows):
        out = generate(
            ref.model,
            inputs.audio_features,
            inputs.input_ids,
            lengths,
            list(recipe.labels),
            max_returned_tokens=inputs.prompt_length + max_new_tokens,
            **_decoding_kwargs(ref),
        )
    return _record(ref, task, inputs.prompt_length, out, max_new_tokens)


def _record(ref: Reference, task: str, prompt_length: int, out: list, max_new_tokens: int) -> Run:
    """The generate_* output as a Run. The reference does not say why it stopped: fewer steps
    than the cap means its stop token came."""
    recipe, eot = RECIPES[task], ref.inference._eot
    audio, frames = None, None
    if recipe.audio_out:  # 7 audio lists, then the text list
        text, audio, frames = out[-1], [list(a) for a in out[:-1]], _frames(ref, out)
    else:
        text = out
    answer_ids = text[: text.index(eot)] if recipe.audio_out and eot in text else text
    stop = "length"
    if len(text) < max_new_tokens:
        stop = "end of audio" if recipe.audio_out else "end of text"
    return Run(
        task=task,
        prompt_length=prompt_length,
        text=list(text),
        audio=audio,
        frames=frames,
        answer_ids=list(answer_ids),
        answer=ref.tokenizer.decode(torch.tensor(answer_ids, dtype=torch.long)).strip(),
        steps=len(text),
        stop=stop,
    )


def _frames(ref: Reference, streams: list[list[int]]) -> list[list[int]]:
    """reconscruct_snac's flat ['#', c0 .. c6, '#', ...] list as 7-code frames."""
    flat = ref.snac_utils.reconscruct_snac([list(s) for s in streams])
    frames = []
    for item in flat:
        if item == "#":
            frames.append([])
        else:
            frames[-1].append(item)
    return frames


def prompt_forward(ref: Reference, task: str, inputs: Inputs):
    """The reference's first step: the whole prompt through its next_token_* function (inside
    `kv_cache`), with the arguments its generate_* loop passes."""
    recipe = RECIPES[task]
    step = getattr(ref.generation, recipe.step)
    positions = torch.arange(0, inputs.prompt_length, device=ref.device)
    kwargs = dict(temperature=TEMPERATURE, top_k=TOP_K, top_p=1.0)
    if not recipe.audio_in:
        return step(ref.model, None, inputs.input_ids, None, None, input_pos=positions, **kwargs)
    features = inputs.audio_features.to(torch.float32).to(ref.model.device)
    lengths = [inputs.audio_frames] * recipe.rows  # the loops pass T - 3: the same number
    return step(
        ref.model,
        features,
        inputs.input_ids,
        lengths,
        list(recipe.step_labels),
        input_pos=positions,
        **kwargs,
    )


def step_ids(ref: Reference, task: str) -> list[torch.Tensor]:
    """One decode step's input: per stream (rows, 1) int32, audio _pad_a (layer-shifted) and
    text _pad_t, the shapes the reference's loops feed after the prompt."""
    inf, rows = ref.inference, RECIPES[task].rows
    audio = [inf.layershift(inf._pad_a, layer) for layer in range(AUDIO_LAYERS)]
    return [
        torch.full((rows, 1), token, dtype=torch.int32, device=ref.device)
        for token in (*audio, inf._pad_t)
    ]


def step_forward(ref: Reference, task: str, ids: list[torch.Tensor], position: int):
    """One decode step of the reference (inside `kv_cache`, after `prompt_forward`)."""
    step = getattr(ref.generation, RECIPES[task].step)
    positions = torch.tensor([position], device=ref.device)
    return step(
        ref.model,
        None,
        ids,
        None,
        None,
        input_pos=positions,
        temperature=TEMPERATURE,
        top_k=TOP_K,
        top_p=1.0,
    )


# --- goldens: the reference's tokens on a random-weight model, for tests/test_reference_parity
CLIPS = ("q_capital.wav", "mini_omni_sample_1.wav")
TEXTS = ("What is the capital of France?", "Can you tell me a story about a fox?")
SHORT_RUN = 64
LONG_RUN = 400  # long enough for a random tiny model to reach its stop tokens
# t2a inputs on which the tiny seed-0 model stops early: the first emits _eot at step 40 (the
# text is then forced to _pad_t) and _eoa at 44; the second stops on the step after the prompt's.
STOPPING_TEXTS = ("What is your name?", "How are you feeling today?")


def golden_cases() -> list[tuple[str, str, int]]:
    """(task, clip file name or text, max_new_tokens) of every golden case."""
    cases = [
        (task, clip, SHORT_RUN) for task in ("a2a", "a2t", "asr", "a2a-batch") for clip in CLIPS
    ]
    cases += [(task, text, SHORT_RUN) for task in ("t2a", "t2t") for text in TEXTS]
    cases += [("a2a", "q_weather.wav", LONG_RUN), ("t2a", TEXTS[0], LONG_RUN)]
    return cases + [("t2a", text, SHORT_RUN) for text in STOPPING_TEXTS]


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict: for each key in sorted order, its UTF-8 name then the tensor's
    bytes (contiguous, stored dtype). Recomputable from a fresh `realtime init-random`."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fingerprints(model_dir: Path) -> dict[str, str]:
    """What the goldens depend on. Of small.pt only the audio encoder counts: the reference never
    runs whisper's text decoder (whose positional_embedding whisper allocates uninitialised)."""

    def load(path: Path):
        return torch.load(path, map_location="cpu", weights_only=True)

    whisper_state = load(model_dir / "small.pt")["model_state_dict"]
    encoder = {key: value for key, value in whisper_state.items() if key.startswith("encoder.")}
    return {
        "lit_model.pth": state_fingerprint(load(model_dir / "lit_model.pth")),
        "small.pt encoder": state_fingerprint(encoder),
        "snac/pytorch_model.bin": state_fingerprint(load(model_dir / "snac" / "pytorch_model.bin")),
        "tokenizer.json": hashlib.sha256((model_dir / "tokenizer.json").read_bytes()).hexdigest(),
    }


def versions() -> dict[str, str]:
    packages = ("torch", "lightning", "openai-whisper", "snac", "tokenizers", "numpy")
    return {"python": sys.version.split()[0]} | {name: metadata.version(name) for name in packages}


def reference_commit(reference_dir: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(reference_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def case_record(
    ref: Reference, task: str, source: str, max_new_tokens: int, data_dir: Path
) -> dict:
    """One golden case: its inputs and the reference's Run."""
    clip = data_dir / source if RECIPES[task].audio_in else None
    inputs = task_inputs(ref, task, clip=clip, text=None if clip else source)
    run = run_task(ref, task, inputs, max_new_tokens)
    record = {"task": task, "input": source, "max_new_tokens": max_new_tokens}
    if clip:
        features = inputs.audio_features[0].float().cpu()  # (T_audio, C); batch rows are equal
        digest = hashlib.sha256(features.contiguous().numpy().tobytes()).hexdigest()
        record |= {"audio_frames": inputs.audio_frames, "features_sha256": digest}
    else:
        record["text_ids"] = inputs.text_ids
    return record | asdict(run)


def write_goldens(ref: Reference, args: argparse.Namespace) -> None:
    cases = []
    for task, source, max_new_tokens in golden_cases():
        cases.append(case_record(ref, task, source, max_new_tokens, args.data_dir))
        case = cases[-1]
        print(
            f"{task:10} {source[:40]:40} T={case['prompt_length']:<4} steps={case['steps']:<4} "
            f"{case['stop']}",
            file=sys.stderr,
        )
    goldens = {
        "preset": args.preset,
        "seed": args.seed,
        "reference": {
            "repository": "gpt-omni/mini-omni",
            "commit": args.reference_commit or reference_commit(args.reference_dir),
        },
        "decoding": {
            "temperature": TEMPERATURE,
            "top_k": TOP_K,
            "dtype": "float32",
            "device": ref.device,
        },
        "versions": versions(),
        "fingerprints": fingerprints(args.model),
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(goldens))
    print(f"wrote {args.out}", file=sys.stderr)


# --- speed: the reference's own per-step forward and its streaming server path, timed ---------


def time_steps(ref: Reference, task: str, inputs: Inputs, steps: int) -> dict:
    """Prefill and `steps` decode steps of `task` through the reference's next_token_* calls
    (forward plus its sampling), each step timed; the inputs fed are _pad ids, which cost the
    same as any others."""
    ids = step_ids(ref, task)
    with kv_cache(ref, RECIPES[task].rows):
        began = time.perf_counter()
        prompt_forward(ref, task, inputs)
        prefill_ms = (time.perf_counter() - began) * 1000
        times = []
        for step in range(steps):
            began = time.perf_counter()
            step_forward(ref, task, ids, inputs.prompt_length + step)
            times.append((time.perf_counter() - began) * 1000)
    return {"prompt_length": inputs.prompt_length, "prefill_ms": prefill_ms} | _summary(times)


def _summary(times_ms: list[float]) -> dict:
    ordered = sorted(times_ms)
    return {
        "step_ms_mean": sum(ordered) / len(ordered),
        "step_ms_median": ordered[len(ordered) // 2],
        "step_ms_min": ordered[0],
        "steps": len(ordered),
    }


def time_first_audio(ref: Reference, clip: Path) -> dict:
    """What the reference's server does per request (`OmniInference.run_AT_batch_stream`, the
    a2a-batch streaming path behind server.py): time from the WAV path to its first audio chunk.
    The object is assembled from the loaded models instead of its hub-downloading __init__."""
    omni = ref.inference.OmniInference.__new__(ref.inference.OmniInference)
    omni.device, omni.fabric, omni.model = ref.device, ref.fabric, ref.model
    omni.text_tokenizer, omni.snacmodel, omni.whispermodel = ref.tokenizer, ref.snac, ref.whisper
    began = time.perf_counter()
    with _audio_reader(), contextlib.redirect_stdout(sys.stderr):
        stream = omni.run_AT_batch_stream(str(clip))
        first = next(stream, None)
        ms = (time.perf_counter() - began) * 1000
        stream.close()  # GeneratorExit skips its clear_kv_cache: do it as a finished run would
    ref.model.clear_kv_cache()
    return {
        "first_audio_ms": ms if first is not None else None,
        "first_chunk_bytes": len(first) if first is not None else 0,
    }


def speed(ref: Reference, args: argparse.Namespace) -> dict:
    clip = args.clip or DATA / "q_capital.wav"
    result = {"versions": versions(), "threads": torch.get_num_threads(), "clip": clip.name}
    inputs = {task: task_inputs(ref, task, clip=clip, text=args.text) for task in args.tasks}
    rounds = {task: [] for task in args.tasks}
    for task in args.tasks:
        time_steps(ref, task, inputs[task], 2)  # warm-up
    for _ in range(args.rounds):  # interleaved, the best round kept: the machine's speed drifts
        for task in args.tasks:
            rounds[task].append(time_steps(ref, task, inputs[task], args.steps))
    for task, runs in rounds.items():
        result[task] = min(runs, key=lambda r: r["step_ms_median"]) | {
            "rounds": len(runs),
            "round_medians_ms": [round(r["step_ms_median"], 2) for r in runs],
        }
        print(f"{task}: {result[task]}", file=sys.stderr)
    time_first_audio(ref, clip)  # warm-up
    runs = [time_first_audio(ref, clip) for _ in range(args.repeats)]
    result["server_stream"] = min(runs, key=lambda r: r["first_audio_ms"] or float("inf"))
    return result


def to_json(obj) -> str:
    """Indented JSON with every list of numbers on one line."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    numbers = re.compile(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]")
    return numbers.sub(lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference-dir", type=Path, required=True, help="a checkout of gpt-omni/mini-omni"
    )
    parser.add_argument("--model", type=Path, required=True, help="model directory")
    parser.add_argument("--device", default="cpu")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="one task; prints its tokens as JSON")
    run.add_argument("task", choices=sorted(RECIPES))
    run.add_argument("--clip", type=Path, help="speech input (16 kHz mono WAV)")
    run.add_argument("--text", help="text input")
    run.add_argument("--max-new-tokens", type=int, default=SHORT_RUN)
    goldens = commands.add_parser("goldens", help="write the golden cases' tokens")
    goldens.add_argument("out", type=Path)
    goldens.add_argument("--data-dir", type=Path, default=DATA)
    goldens.add_argument("--preset", default="tiny", help="recorded: the init-random preset")
    goldens.add_argument("--seed", type=int, default=0, help="recorded: the init-random seed")
    goldens.add_argument("--reference-commit", help="recorded (default: git rev-parse HEAD)")
    timing = commands.add_parser("speed", help="time the reference's steps and first audio")
    timing.add_argument("--tasks", nargs="+", default=["a2a", "a2a-batch"])
    timing.add_argument("--clip", type=Path, help="speech input (default tests/data/q_capital)")
    timing.add_argument("--text", default="What is the capital of France?")
    timing.add_argument("--steps", type=int, default=24)
    timing.add_argument("--repeats", type=int, default=2, help="first-audio runs (best)")
    timing.add_argument("--rounds", type=int, default=3, help="interleaved step timing rounds")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    ref = load_reference(args.reference_dir, args.model, args.device)
    if args.command == "goldens":
        write_goldens(ref, args)
        return
    if args.command == "speed":
        print(json.dumps(speed(ref, args), indent=1))
        return
    inputs = task_inputs(ref, args.task, clip=args.clip, text=args.text)
    print(to_json(asdict(run_task(ref, args.task, inputs, args.max_new_tokens))), end="")


if __name__ == "__main__":
    main()
