"""`realtime init-random`: a complete model directory with random weights in the official
formats, for tests (`tiny`) and speed figures at the released shapes (`mini-omni`).

What it writes loads in the reference implementation's own loaders: litgpt's `Config` from the
yaml and a strict state-dict load, `whisper.load_model` on `small.pt`, and SNAC from its config.
"""

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import whisper
import yaml
from snac import SNAC

from realtime.model import checkpoint, tokens
from realtime.model.config import ModelConfig, Preset
from realtime.model.lm import OmniLM
from realtime.model.tokenizer import QWEN2_TOKENIZER_CONFIG, train_small_bpe

NORM_WEIGHTS = ("norm_1.weight", "norm_2.weight", "ln_f.weight")
BIAS_STD = 0.02  # small random biases, so the qkv-bias path is exercised


def litgpt_config(cfg: ModelConfig) -> dict:
    """The `model_config.yaml` fields litgpt's `Config` takes for a Mini-Omni model."""
    return {
        "name": "mini-omni",
        "hf_config": {"name": "mini-omni", "org": "gpt-omni"},
        "block_size": cfg.block_size,
        "vocab_size": tokens.TEXT_VOCAB,
        "padded_vocab_size": cfg.padded_vocab_size,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_query_groups": cfg.n_query_groups,
        "head_size": cfg.head_size,
        "n_embd": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "rotary_percentage": 1.0,
        "rope_base": cfg.rope_base,
        "parallel_residual": False,
        "bias": False,
        "lm_head_bias": False,
        "add_qkv_bias": cfg.add_qkv_bias,
        "norm_class_name": "RMSNorm",
        "norm_eps": cfg.norm_eps,
        "mlp_class_name": "LLaMAMLP",
        "shared_attention_norm": False,
        "scale_embeddings": False,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "text_vocab_size": cfg.text_vocab_size,
        "audio_vocab_size": cfg.audio_vocab_size,
        "cat_audio_vocab_size": tokens.AUDIO_LAYERS * cfg.audio_vocab_size,
        "whisper_adapter_dim": cfg.whisper_adapter_dim,
        "asr_adapter": "llamamlp",
        "post_adapter": False,
    }


def random_lm_state(preset: Preset, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """litgpt-named fp32 weights: N(0, 1/fan_in) matrices, small biases, unit norms.

    Unit-variance activations keep a random model's tokens varied (litgpt's 0.02 makes every
    layer a near no-op, and greedy decoding then repeats one token forever).
    """
    model = OmniLM(preset.model)
    with torch.no_grad():
        for name, param in model.named_parameters():  # the tied head is visited once
            if name.endswith(NORM_WEIGHTS):
                param.fill_(1.0)
            elif param.dim() == 1:
                param.normal_(0.0, BIAS_STD, generator=generator)
            else:
                param.normal_(0.0, param.shape[-1] ** -0.5, generator=generator)
        table = model.transformer.wte.weight
        for row in (tokens.EOT, tokens.layer_shift(tokens.EOA, tokens.AUDIO_LAYERS - 1)):
            table[row] *= preset.stop_token_gain
    return model.state_dict()


def write_random_model(directory: Path, preset: Preset, seed: int = 0, log=None) -> None:
    """Write lit_model.pth, model_config.yaml, the tokenizer, small.pt and snac/ into directory."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # whisper and SNAC use their modules' default initialisers

    log(f"writing {checkpoint.LM_WEIGHTS} ({_param_count(preset.model) / 1e6:.0f}M parameters)")
    torch.save(random_lm_state(preset, generator), directory / checkpoint.LM_WEIGHTS)
    (directory / checkpoint.LM_CONFIG).write_text(yaml.safe_dump(litgpt_config(preset.model)))

    log(f"writing {checkpoint.TOKENIZER} ({preset.tokenizer_vocab}-id byte-level BPE)")
    train_small_bpe(preset.tokenizer_vocab).save(str(directory / checkpoint.TOKENIZER))
    (directory / checkpoint.TOKENIZER_CONFIG).write_text(
        json.dumps(QWEN2_TOKENIZER_CONFIG, indent=2)
    )

    log(f"writing {checkpoint.WHISPER_FILE} (openai-whisper format)")
    _write_whisper(directory / checkpoint.WHISPER_FILE, preset, seed)

    log(f"writing {checkpoint.SNAC_DIR}/ (SNAC {preset.snac.sampling_rate} Hz)")
    _write_snac(directory / checkpoint.SNAC_DIR, preset)
    log(f"done: {directory}")


def _write_whisper(path: Path, preset: Preset, seed: int) -> None:
    dims = asdict(preset.whisper)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**dims))
    # whisper allocates the text decoder's positions with torch.empty: fill them, from a
    # generator of their own so the global stream (and SNAC's weights after) stay as they were.
    positions = model.decoder.positional_embedding
    positions.data.normal_(0.0, BIAS_STD, generator=torch.Generator().manual_seed(seed))
    # The released checkpoints store fp16 weights; whisper.load_model upcasts them.
    state = {name: t.half() for name, t in model.state_dict().items()}
    torch.save({"dims": dims, "model_state_dict": state}, path)


def _write_snac(directory: Path, preset: Preset) -> None:
    directory.mkdir(exist_ok=True)
    config = asdict(preset.snac)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    torch.save(SNAC(**config).state_dict(), directory / "pytorch_model.bin")


def _param_count(cfg: ModelConfig) -> int:
    qkv = (cfg.n_head + 2 * cfg.n_query_groups) * cfg.head_size * (cfg.n_embd + 1)
    mlp = 3 * cfg.n_embd * cfg.intermediate_size
    layer = qkv + cfg.n_head * cfg.head_size * cfg.n_embd + mlp + 2 * cfg.n_embd
    adapter = cfg.intermediate_size * (2 * cfg.whisper_adapter_dim + cfg.n_embd)
    return cfg.n_layer * layer + cfg.padded_vocab_size * cfg.n_embd + adapter + cfg.n_embd
