"""The model's dimensions and the named presets.

`ModelConfig` travels with a checkpoint (`model_config.yaml`), as do the whisper and SNAC
dimensions beside it; `Preset` names the complete set of shapes `realtime init-random` writes.
How a request is decoded is another object, chosen per request: realtime/decoding/options.py.
"""

from dataclasses import dataclass, field

from realtime.model import tokens


@dataclass(frozen=True)
class ModelConfig:
    """The language model's dimensions, as litgpt's `Config` names them."""

    n_layer: int
    n_head: int
    n_query_groups: int
    head_size: int
    n_embd: int
    intermediate_size: int
    norm_eps: float = 1e-6
    rope_base: int = 1_000_000
    block_size: int = 2048
    padded_vocab_size: int = tokens.VOCAB_PADDED
    text_vocab_size: int = tokens.TEXT_VOCAB_PADDED
    audio_vocab_size: int = tokens.AUDIO_LAYER_VOCAB
    whisper_adapter_dim: int = 768
    add_qkv_bias: bool = True
    tie_word_embeddings: bool = True


@dataclass(frozen=True)
class WhisperDims:
    """openai-whisper's `ModelDimensions` fields (the `dims` entry of its checkpoints)."""

    n_mels: int = 80
    n_audio_ctx: int = tokens.WHISPER_MAX_FRAMES
    n_audio_state: int = 768
    n_audio_head: int = 12
    n_audio_layer: int = 12
    n_vocab: int = 51865
    n_text_ctx: int = 448
    n_text_state: int = 768
    n_text_head: int = 12
    n_text_layer: int = 12


@dataclass(frozen=True)
class SnacConfig:
    """The `config.json` of a SNAC checkpoint (hubertsiuzdak/snac_24khz's values by default)."""

    sampling_rate: int = tokens.OUTPUT_SAMPLE_RATE_HZ
    encoder_dim: int = 48
    encoder_rates: tuple[int, ...] = (2, 4, 8, 8)
    latent_dim: int | None = None  # None: encoder_dim * 2 ** len(encoder_rates)
    decoder_dim: int = 1024
    decoder_rates: tuple[int, ...] = (8, 8, 4, 2)
    attn_window_size: int | None = None
    codebook_size: int = tokens.CODEBOOK_SIZE
    codebook_dim: int = 8
    vq_strides: tuple[int, ...] = tokens.SNAC_VQ_STRIDES
    noise: bool = True
    depthwise: bool = True


@dataclass(frozen=True)
class Preset:
    """Every shape of a complete model directory, for `realtime init-random`."""

    model: ModelConfig
    whisper: WhisperDims = field(default_factory=WhisperDims)
    snac: SnacConfig = field(default_factory=SnacConfig)
    # The real Qwen2 tokenizer cannot be made offline: both presets get a small real BPE
    # with the same layout (byte-level, Qwen2 pre-tokenizer, <|endoftext|>).
    tokenizer_vocab: int = 1000
    # Random weights rarely pick a stop token; scaling the _eot and layer-6 _eoa rows of the
    # tied table makes test models stop now and then, so the stop rules get exercised.
    stop_token_gain: float = 1.0


PRESETS: dict[str, Preset] = {
    # The released gpt-omni/mini-omni shapes (Qwen2-0.5B backbone, whisper small, SNAC 24 kHz).
    "mini-omni": Preset(
        model=ModelConfig(
            n_layer=24,
            n_head=14,
            n_query_groups=2,
            head_size=64,
            n_embd=896,
            intermediate_size=4864,
        ),
    ),
    # Few layers and a narrow width, but the official token layout, ids and audio rates.
    "tiny": Preset(
        model=ModelConfig(
            n_layer=2,
            n_head=4,
            n_query_groups=2,
            head_size=16,
            n_embd=64,
            intermediate_size=128,
            whisper_adapter_dim=64,
        ),
        whisper=WhisperDims(
            n_audio_state=64,
            n_audio_head=2,
            n_audio_layer=2,
            n_text_ctx=64,
            n_text_state=64,
            n_text_head=2,
            n_text_layer=1,
        ),
        snac=SnacConfig(encoder_dim=8, decoder_dim=64),
        stop_token_gain=2.5,
    ),
}
