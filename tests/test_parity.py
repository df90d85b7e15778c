"""Our greedy float32 tokens equal the reference implementation's, token for token.

tests/golden/reference_tokens.json was made by running gpt-omni/mini-omni's own decoding loops
on the `tiny` seed-0 checkpoint that `realtime init-random` writes (README.md beside it says
how). The fingerprint test tells "init-random changed" apart from "parity broke".
"""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from realtime.audio.io import load_audio
from realtime.decoding.generate import generate_tokens
from realtime.decoding.options import DecodingOptions
from realtime.decoding.runtime import Request, Result
from realtime.model import tokens
from realtime.model.prompts import TASKS, Task

from .conftest import DATA

GOLDEN = json.loads((Path(__file__).parent / "golden" / "reference_tokens.json").read_text())
CASES = GOLDEN["cases"]


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted keys: each key's UTF-8 name, then its tensor's bytes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_tiny_checkpoint_is_the_one_the_goldens_came_from(tiny_dir):
    assert GOLDEN["preset"] == "tiny" and GOLDEN["seed"] == 0
    load = lambda path: torch.load(path, map_location="cpu", weights_only=True)  # noqa: E731
    encoder = {
        k: v
        for k, v in load(tiny_dir / "small.pt")["model_state_dict"].items()
        if k.startswith("encoder.")
    }
    assert {
        "lit_model.pth": state_fingerprint(load(tiny_dir / "lit_model.pth")),
        "small.pt encoder": state_fingerprint(encoder),
        "snac/pytorch_model.bin": state_fingerprint(load(tiny_dir / "snac/pytorch_model.bin")),
        "tokenizer.json": hashlib.sha256((tiny_dir / "tokenizer.json").read_bytes()).hexdigest(),
    } == GOLDEN["fingerprints"]


def request_for(case) -> Request:
    task = Task(case["task"])
    options = DecodingOptions(max_new_tokens=case["max_new_tokens"])
    if TASKS[task].audio_in:
        return Request(task, audio=load_audio(DATA / case["input"]), options=options)
    return Request(task, text=case["input"], options=options)


def case_id(case) -> str:
    return f"{case['task']}-{case['input'][:16]}-{case['max_new_tokens']}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_greedy_tokens_equal_the_reference(runtime, case):
    request = request_for(case)
    inp = runtime.prepare(request)
    assert inp.prompt.length == case["prompt_length"]
    if inp.audio is None:
        assert inp.prompt.ids[0, 1:-2, -1].tolist() == case["text_ids"]
    *_, (gen, _) = generate_tokens(runtime.lm, runtime.cache, inp, request.task, request.options)
    assert gen.text == case["text"]
    if TASKS[request.task].audio_out:
        assert [list(layer) for layer in zip(*gen.audio, strict=True)] == case["audio"]
        assert gen.frames() == case["frames"]
    assert gen.text_tokens() == [t for t in case["answer_ids"] if t != tokens.EOT]
    assert (gen.steps, gen.stop_reason) == (case["steps"], case["stop"])


@pytest.mark.parametrize("case", [c for c in CASES if c["task"] in ("a2a", "t2a")][:3], ids=case_id)
def test_the_runtime_reports_the_same_tokens(runtime, case):
    result = [e for e in runtime.run(request_for(case)) if isinstance(e, Result)][0]
    frames = case["frames"] or []
    assert result.audio_codes == [list(layer) for layer in zip(*frames, strict=True)]
    assert (result.steps, result.stop_reason) == (case["steps"], case["stop"])
