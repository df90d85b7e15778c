"""Finding and loading a Mini-Omni model directory.

`--model` is a local directory laid out like the hub snapshot of gpt-omni/mini-omni, or a hub
name. Whisper (`small.pt`) and SNAC (`snac/`) are looked for in the directory first, then in the
usual caches (openai-whisper's, Hugging Face's), then downloaded with a progress bar.
Every failure is a `ModelError` whose message is one line saying what is missing and what to do.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from realtime.model import tokens
from realtime.model.config import ModelConfig
from realtime.model.lm import OmniLM, rope_cache

log = logging.getLogger(__name__)

LM_WEIGHTS = "lit_model.pth"
LM_CONFIG = "model_config.yaml"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
LM_FILES = (LM_WEIGHTS, LM_CONFIG, TOKENIZER, TOKENIZER_CONFIG)
WHISPER_NAME = "small"  # the reference calls whisper.load_model("small")
WHISPER_FILE = f"{WHISPER_NAME}.pt"
SNAC_DIR = "snac"
SNAC_FILES = ("config.json", "pytorch_model.bin")
SNAC_REPO = "hubertsiuzdak/snac_24khz"
DEFAULT_MODEL = "gpt-omni/mini-omni"
TRY_A_MODEL = "`realtime init-random DIR --preset tiny` writes a random one to try things with"
FAMILY = "mini-omni"  # what a local model directory is called to clients

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(Exception):
    """A model that cannot be found, read or used; the message is one line for the user."""


@dataclass(frozen=True)
class ModelFiles:
    root: Path  # holds the language model files (LM_FILES)
    whisper: Path  # openai-whisper checkpoint file
    snac: Path  # directory with SNAC_FILES

    def lm(self, name: str) -> Path:
        return self.root / name


def model_name(spec: str) -> str:
    """The name clients are told for model `spec`: a hub name as given (a directory of the hub
    cache, `models--ORG--NAME/snapshots/...`, by its hub name); any other directory by the
    family's name, never its local path."""
    root = Path(spec).expanduser()
    if not root.is_dir():
        return spec
    for part in reversed(root.resolve().parts):
        if part.startswith("models--") and part.count("--") >= 2:
            return "/".join(part.removeprefix("models--").split("--", 1))
    return FAMILY


def resolve(spec: str, offline: bool = False) -> ModelFiles:
    """Locate every file of model `spec` (a directory or a hub name), downloading if allowed."""
    offline = offline or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    root = Path(spec).expanduser()
    if not root.is_dir():
        if spec.startswith((".", "/", "~")) or root.exists() or spec.count("/") != 1:
            raise ModelError(
                f"model directory {spec} does not exist: give one, or a hub name "
                f"({DEFAULT_MODEL}, downloaded on first use); {TRY_A_MODEL}"
            )
        root = _hub_snapshot(spec, list(LM_FILES), offline, f"pass --model DIR ({TRY_A_MODEL})")
    missing = [name for name in LM_FILES if not (root / name).is_file()]
    if missing:
        raise ModelError(
            f"model directory {root} lacks {', '.join(missing)}: expected a snapshot of "
            f"{DEFAULT_MODEL}; {TRY_A_MODEL}"
        )
    return ModelFiles(
        root=root, whisper=_find_whisper(root, offline), snac=_find_snac(root, offline)
    )


def _hub_snapshot(repo: str, files: list[str], offline: bool, instead: str) -> Path:
    """The cached snapshot of `repo`, downloaded if allowed; `instead` says what else to do."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=files, local_files_only=True))
    except Exception:  # not cached (huggingface_hub raises several types for this)
        if offline:
            raise ModelError(
                f"{repo} is not in the Hugging Face cache and downloads are off (--offline "
                f"or HF_HUB_OFFLINE): allow them once, or {instead}"
            ) from None
    try:
        print(f"downloading {repo} from the Hugging Face hub", flush=True)
        return Path(snapshot_download(repo, allow_patterns=files))
    except Exception as exc:
        raise ModelError(
            f"{repo} is not cached and could not be downloaded ({_first_line(exc)}): "
            f"connect to the internet, or {instead}"
        ) from None


def _find_whisper(root: Path, offline: bool) -> Path:
    if (root / WHISPER_FILE).is_file():
        return root / WHISPER_FILE
    cache = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"
    if (cache / WHISPER_FILE).is_file():
        return cache / WHISPER_FILE
    hint = f"put openai-whisper's {WHISPER_FILE} in {root} or {cache}"
    if offline:
        raise ModelError(
            f"whisper {WHISPER_NAME} not found and downloads are off: allow them once, or {hint}"
        )
    import whisper

    try:
        print(f"downloading whisper {WHISPER_NAME}", flush=True)
        # openai-whisper's own downloader: checksum-verified, with a progress bar.
        return Path(whisper._download(whisper._MODELS[WHISPER_NAME], str(cache), False))
    except Exception as exc:
        raise ModelError(
            f"whisper {WHISPER_NAME} could not be downloaded ({_first_line(exc)}); {hint}"
        ) from None


def _find_snac(root: Path, offline: bool) -> Path:
    local = root / SNAC_DIR
    if all((local / name).is_file() for name in SNAC_FILES):
        return local
    instead = f"put {' and '.join(SNAC_FILES)} in {local}"
    try:
        return _hub_snapshot(SNAC_REPO, list(SNAC_FILES), offline, instead)
    except ModelError as exc:
        raise ModelError(f"SNAC not found: {exc}") from None


def read_config(path: Path) -> ModelConfig:
    """Read litgpt's `model_config.yaml`, refusing architectures this runtime does not run."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read {path}: {_first_line(exc)}") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path} is not a litgpt model config")
    expected = {
        "norm_class_name": "RMSNorm",
        "mlp_class_name": "LLaMAMLP",
        "parallel_residual": False,
        "post_adapter": False,
        "scale_embeddings": False,
        "rotary_percentage": 1.0,
        "asr_adapter": "llamamlp",
    }
    for key, value in expected.items():
        if raw.get(key, value) != value:
            raise ModelError(
                f"{path}: {key}={raw[key]!r} is not supported (Mini-Omni has {value!r})"
            )
    fields = ModelConfig.__dataclass_fields__
    try:
        cfg = ModelConfig(**{k: raw[k] for k in fields if k in raw})
    except TypeError as exc:
        raise ModelError(f"{path}: {_first_line(exc)}") from None
    _check_layout(cfg, path)
    return cfg


def _check_layout(cfg: ModelConfig, path: Path) -> None:
    layout = {
        "padded_vocab_size": tokens.VOCAB_PADDED,
        "text_vocab_size": tokens.TEXT_VOCAB_PADDED,
        "audio_vocab_size": tokens.AUDIO_LAYER_VOCAB,
    }
    for key, value in layout.items():
        if getattr(cfg, key) != value:
            raise ModelError(
                f"{path}: {key}={getattr(cfg, key)} but the Mini-Omni token layout needs {value}"
            )
    if cfg.n_head % cfg.n_query_groups:
        raise ModelError(f"{path}: n_head {cfg.n_head} is not a multiple of n_query_groups")


def load_lm(files: ModelFiles, device: torch.device | str, dtype: torch.dtype) -> OmniLM:
    """Build the language model from `lit_model.pth`, strictly checked against its config."""
    cfg = read_config(files.lm(LM_CONFIG))
    path = files.lm(LM_WEIGHTS)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise ModelError(f"cannot read {path}: {_first_line(exc)}") from None
    with torch.device("meta"):
        model = OmniLM(cfg)
    _check_state(model, state, path)
    # The head is tied to the embedding; like the reference's strict load, wte wins.
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model.lm_head.weight = model.transformer.wte.weight
    model.cos, model.sin = rope_cache(cfg.block_size, cfg.head_size, cfg.rope_base)
    model = model.to(device).eval().requires_grad_(False).fuse()
    if model.pack():
        log.info(
            "this CPU has AMX: the model's products of several rows take its weights packed"
            " for oneDNN (a second copy of them)"
        )
    return model


def _check_state(model: OmniLM, state: object, path: Path) -> None:
    if not isinstance(state, dict):
        raise ModelError(f"{path} is not a state dict")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ModelError(
            f"{path} does not match {LM_CONFIG}: {what} "
            f"({len(missing)} missing, {len(extra)} unexpected keys)"
        )
    for key, shape in expected.items():
        if not isinstance(state[key], torch.Tensor) or tuple(state[key].shape) != shape:
            got = tuple(getattr(state[key], "shape", ()))
            raise ModelError(
                f"{path} does not match {LM_CONFIG}: {key} has shape {got}, "
                f"the config needs {shape}"
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
