"""Where the learned turn models live and how they are opened: one ONNX Runtime session per file,
and one error for a model that is missing or unreadable.

The weights ship inside the `pipecat-ai` wheel (Smart Turn v3, BSD-2; Silero VAD v5, MIT). They
are found through the installed distribution's file list, not by importing `pipecat`, which
would log its banner and pull in its framework.
"""

import importlib.metadata
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime as ort

MODELS_DISTRIBUTION = "pipecat-ai"
SMART_TURN_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
SILERO_VAD_FILE = "pipecat/audio/vad/data/silero_vad.onnx"
INSTALL_HINT = f"pip install --force-reinstall {MODELS_DISTRIBUTION}"
ERROR_DETAIL_CHARS = 160  # onnxruntime's messages run to many lines; the first part says enough

ModelPath = str | os.PathLike[str]


class TurnModelError(ValueError):
    """A turn model that cannot be used; the message is one line naming the file and the fix."""


def bundled_model(relative: str) -> Path:
    """The path of a model file inside the installed `pipecat-ai` distribution."""
    try:
        distribution = importlib.metadata.distribution(MODELS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise TurnModelError(
            f"{relative}: {MODELS_DISTRIBUTION} is not installed; its wheel ships this model "
            f"(pip install {MODELS_DISTRIBUTION})"
        ) from None
    return Path(str(distribution.locate_file(relative)))


def open_session(
    path: ModelPath, inputs: tuple[str, ...], threads: int = 1
) -> "ort.InferenceSession":
    """A CPU session for the ONNX model at `path` whose inputs are named `inputs`.

    Sequential execution, `threads` intra-op threads and one inter-op thread: the server runs
    many small calls side by side, so one call never fans out over the machine's cores.
    `InferenceSession.run` is thread-safe, so one session serves every caller.
    """
    if not Path(path).is_file():
        raise TurnModelError(f"{path}: no such model file (reinstall it: {INSTALL_HINT})")
    try:  # (imported here: a server without it still serves, on the models that need none)
        import onnxruntime as ort
    except ImportError:
        message = f"{path}: onnxruntime is not installed (pip install onnxruntime)"
        raise TurnModelError(message) from None
    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's own exception types are not importable API
        detail = " ".join(str(exc).split())[:ERROR_DETAIL_CHARS]
        raise TurnModelError(
            f"{path}: not a readable ONNX model ({detail}); reinstall it: {INSTALL_HINT}"
        ) from None
    found = tuple(i.name for i in session.get_inputs())
    if found != inputs:
        raise TurnModelError(
            f"{path}: a different model (inputs {found}, expected {inputs}); "
            f"reinstall it: {INSTALL_HINT}"
        )
    return session
