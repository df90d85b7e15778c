"""One request end to end: speech or text in, streamed text and 24 kHz speech out.

    audio (16 kHz) -> encoder (whisper, exact or chunked) -> adapter -> prefill
    -> delayed-parallel decode steps -> text deltas (detokenizer)
                                     -> frames -> streaming SNAC vocoder -> PCM chunks

`Runtime` owns the loaded models and one KV cache, allocated once. `Runtime.run` is a generator
of events so a caller can play audio and show text while decoding goes on.
"""

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from kernels import TORCH_ONLY_ENV, KernelsUnavailable, torch_only
from realtime.audio import encoder, vocoder
from realtime.decoding.generate import Generation, PrefillInput, generate_tokens
from realtime.decoding.options import ENCODER_MODES, DecodingOptions
from realtime.device.threads import on_fresh_thread
from realtime.model import checkpoint, tokens
from realtime.model.prompts import TASKS, Prompt, Task, build_prompt
from realtime.model.tokenizer import IncrementalDetokenizer, load_tokenizer

MAX_ROWS = max(spec.rows for spec in TASKS.values())

log = logging.getLogger(__name__)


def kernel_step_enabled(device: torch.device) -> bool:
    """Whether decode steps run on our Triton kernels by default: on CUDA, unless
    REALTIME_TORCH_ONLY is set (the interpreter on a CPU is for tests, which ask for it)."""
    return device.type == "cuda" and not torch_only()


def kernel_decoder_or_none(required: bool, *args, **kwargs):
    """KernelDecoder(*args, **kwargs); or, where the kernel step cannot be built on this machine
    (no Triton, a kernel this GPU cannot compile or fit, a capture its driver refuses) and was
    not `required`, None with a warning that says why: decoding then runs on the torch path
    (slower). What the caller asked for explicitly fails instead."""
    try:
        from realtime.decoding.gpu.decoder import KernelDecoder  # imports triton: only when used

        return KernelDecoder(*args, **kwargs)
    except (ImportError, KernelsUnavailable) as exc:
        if required:
            raise
        log.warning(
            "the decode step cannot run on our Triton kernels here, so it runs on torch (slower)"
            ": %s. Set %s=1 to choose torch without this warning.", exc, TORCH_ONLY_ENV,
        )  # fmt: skip
        return None


class RequestError(ValueError):
    """A request that cannot be served (wrong input for the task, too long, ...): one line."""


@dataclass(frozen=True)
class Request:
    task: Task
    audio: np.ndarray | None = None  # 16 kHz mono float32, for speech-input tasks
    text: str | None = None  # for text-input tasks
    options: DecodingOptions = field(default_factory=DecodingOptions)
    encoder: str = "exact"


@dataclass
class TextDelta:
    text: str


@dataclass
class AudioChunk:
    pcm: np.ndarray  # float32 mono at tokens.OUTPUT_SAMPLE_RATE_HZ


@dataclass
class Result:
    task: str
    text: str
    text_tokens: list[int]
    audio_codes: list[list[int]]  # 7 lists: layer i's code per frame, delay removed
    steps: int
    stop_reason: str
    timings: dict[str, float | None]
    replaced_codes: int = 0  # invalid codes the vocoder had to repair


class Runtime:
    """The loaded model family on one device."""

    def __init__(
        self,
        files: checkpoint.ModelFiles,
        device: str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        kernels: bool | None = None,
    ) -> None:
        """`kernels`: decode on our Triton kernels (None: where kernel_step_enabled says).
        Loads on a thread that ends with the load, leaving no torch thread pool behind for the
        engine's thread to wait on (realtime.device.threads)."""
        on_fresh_thread(self._load, files, device, dtype, kernels)

    def _load(self, files: checkpoint.ModelFiles, device: str, dtype, kernels) -> None:
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(files.lm(checkpoint.TOKENIZER))
        self.lm = checkpoint.load_lm(files, self.device, dtype)
        try:
            # Whisper and SNAC stay fp32: small next to the LM, and the reference runs them so.
            self.whisper = encoder.load_whisper_encoder(files.whisper, self.device)
            self.vocoder = vocoder.Vocoder(vocoder.load_snac(files.snac, self.device))
        except (ValueError, RuntimeError) as exc:
            raise checkpoint.ModelError(str(exc).splitlines()[0]) from None
        if self.whisper.ln_post.normalized_shape[0] != self.lm.cfg.whisper_adapter_dim:
            raise checkpoint.ModelError(
                f"{files.whisper} has width {self.whisper.ln_post.normalized_shape[0]} but the "
                f"model's whisper adapter takes {self.lm.cfg.whisper_adapter_dim}"
            )
        self.kernels = kernel_step_enabled(self.device) if kernels is None else kernels
        self.kernels_required = bool(kernels)  # asked for: then failing to build them raises
        # The kernel step's padding rows write to one extra slot that no request owns.
        self.cache = self.lm.new_cache(MAX_ROWS + self.kernels)
        self.decoder = None  # the kernel step, built on first use (it compiles and captures)

    def kernel_decoder(self):
        """The KernelDecoder for single requests, or None where decoding runs on torch (also
        where the kernels were not asked for and cannot be built here: see
        kernel_decoder_or_none)."""
        if self.kernels and self.decoder is None:
            self.decoder = kernel_decoder_or_none(
                self.kernels_required, self.lm, self.cache, MAX_ROWS, pad_slot=MAX_ROWS
            )
            self.kernels = self.decoder is not None  # (not tried again)
        return self.decoder

    @classmethod
    def load(
        cls,
        model: str,
        device: str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        offline: bool = False,
    ) -> "Runtime":
        return cls(checkpoint.resolve(model, offline=offline), device, dtype)

    def run(self, request: Request) -> Iterator[TextDelta | AudioChunk | Result]:
        """Serve one request; yields text and audio as they are produced, then the Result."""
        clock = _Clock()
        inp = self.prepare(request, clock)
        steps = generate_tokens(
            self.lm, self.cache, inp, request.task, request.options, self.kernel_decoder()
        )
        gen = None
        detok = IncrementalDetokenizer(self.tokenizer)
        stream = vocoder.VocoderStream(device=self.device)
        while (item := clock.timed("decode", next, steps, None)) is not None:
            gen, out = item
            if out.text_token is not None and (delta := detok.push(out.text_token)):
                yield TextDelta(delta)
            if out.frame is not None:
                stream.push(torch.tensor([out.frame]))
                yield from self._audio(self.vocoder.step([stream])[0], clock)
        if tail := detok.flush():
            yield TextDelta(tail)
        if TASKS[request.task].audio_out:
            yield from self._audio(self.vocoder.flush([stream])[0], clock)
        assert gen is not None  # generate_tokens yields step 0 or raises
        yield self._result(request, gen, stream, clock)

    def prepare(self, request: Request, clock: "_Clock | None" = None) -> PrefillInput:
        """Encode the input and build the prompt: everything before the first model step."""
        clock = clock or _Clock()
        spec = TASKS[request.task]
        if spec.audio_in:
            features = clock.timed("encode", self._encode, request)
            prompt = build_prompt(request.task, audio_frames=features.shape[0])
            inp = PrefillInput(prompt, clock.timed("adapt", self.lm.adapt, features))
        else:
            if not request.text or not request.text.strip():
                raise RequestError(f"task {request.task} needs input text")
            ids = self.tokenizer.encode(request.text).ids
            inp = PrefillInput(build_prompt(request.task, text_ids=ids))
        self._check_room(inp.prompt)
        return inp

    def _encode(self, request: Request) -> torch.Tensor:
        if request.audio is None or request.audio.size == 0:
            raise RequestError(f"task {request.task} needs input speech")
        if request.encoder not in ENCODER_MODES:
            raise RequestError(f"unknown encoder mode {request.encoder!r}: {ENCODER_MODES}")
        seconds = request.audio.shape[-1] / tokens.INPUT_SAMPLE_RATE_HZ
        if request.audio.shape[-1] > tokens.WHISPER_MAX_SAMPLES:
            raise RequestError(
                f"the input speech is {seconds:.1f} s long; Mini-Omni hears at "
                f"most {tokens.WHISPER_MAX_SECONDS:.0f} s at a time"
            )
        encode = encoder.encode_exact if request.encoder == "exact" else encoder.encode_chunked
        with torch.inference_mode():
            return encode(self.whisper, request.audio)

    def _check_room(self, prompt: Prompt) -> None:
        if prompt.length >= self.cache.max_seq:
            raise RequestError(
                f"the input takes {prompt.length} positions; the model's context "
                f"holds {self.cache.max_seq}, leaving no room for an answer"
            )

    def _audio(self, pcm: np.ndarray, clock: "_Clock") -> Iterator[AudioChunk]:
        if pcm.size:
            clock.mark("first_audio")
            yield AudioChunk(pcm)

    def _result(self, request: Request, gen: Generation, stream, clock: "_Clock") -> Result:
        assert gen.stop_reason is not None  # generate_tokens runs it to its end
        text_ids = gen.text_tokens()
        frames = gen.frames()
        return Result(
            task=request.task.value,
            text=self.tokenizer.decode(text_ids).strip(),
            text_tokens=text_ids,
            audio_codes=[list(layer) for layer in zip(*frames, strict=True)]
            if frames
            else [[] for _ in range(tokens.AUDIO_LAYERS)],
            steps=gen.steps,
            stop_reason=gen.stop_reason,
            timings=clock.summary(),
            replaced_codes=stream.replaced_codes,
        )


class _Clock:
    """Wall-clock figures of one request, in milliseconds from its start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.spent = {"encode": 0.0, "adapt": 0.0}
        self.decode_ms: list[float] = []  # each call of the decode generator
        self.marks: dict[str, float] = {}

    def timed(self, what: str, fn, *args):
        began = time.perf_counter()
        result = fn(*args)
        elapsed = (time.perf_counter() - began) * 1000
        if what == "decode":
            self.decode_ms.append(elapsed)
        else:
            self.spent[what] += elapsed
        return result

    def mark(self, what: str) -> None:
        self.marks.setdefault(what, (time.perf_counter() - self.start) * 1000)

    def summary(self) -> dict[str, float | None]:
        # decode: [prefill + first sample, one per later step ..., the call that found the end]
        decode = self.decode_ms
        later = decode[1:-1]
        first_audio = self.marks.get("first_audio")
        return {
            "encode_ms": round(self.spent["encode"], 3),
            "prefill_ms": round(self.spent["adapt"] + decode[0], 3),
            "first_audio_ms": None if first_audio is None else round(first_audio, 3),
            "decode_ms_per_step": round(sum(later) / len(later), 3) if later else None,
            "total_ms": round((time.perf_counter() - self.start) * 1000, 3),
        }
