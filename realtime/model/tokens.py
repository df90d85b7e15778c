"""Token layout of the Mini-Omni family and the audio units derived from it.

One embedding table and one head cover every stream: the text ids first, then seven audio
layers of `AUDIO_LAYER_VOCAB` ids each. Everything here is derived from a handful of facts so
no bare 152000, 4160 or 7 appears anywhere else.
"""

# --- text stream (Qwen2 ids, then Mini-Omni's specials) ------------------------------------
TEXT_VOCAB = 151936  # Qwen2's ids 0..151935
TEXT_SPECIALS = 64  # room reserved after the text ids
TEXT_VOCAB_PADDED = TEXT_VOCAB + TEXT_SPECIALS  # 152000: start of the audio ranges

EOT = TEXT_VOCAB  # end of text
PAD_T = TEXT_VOCAB + 1
INPUT_T = TEXT_VOCAB + 2
ANSWER_T = TEXT_VOCAB + 3
ASR = TEXT_VOCAB + 4

# --- audio streams (SNAC codes, then specials) ---------------------------------------------
AUDIO_LAYERS = 7  # codes per SNAC frame, one decoder stream each
STREAMS = AUDIO_LAYERS + 1  # 7 audio streams + the text stream, in that order
TEXT_STREAM = AUDIO_LAYERS  # index of the text stream in every (…, STREAMS) tensor
CODEBOOK_SIZE = 4096  # SNAC codes 0..4095
AUDIO_SPECIALS = 64
AUDIO_LAYER_VOCAB = CODEBOOK_SIZE + AUDIO_SPECIALS  # 4160 ids per layer

EOA = CODEBOOK_SIZE  # end of audio (layer-local id)
PAD_A = CODEBOOK_SIZE + 1
INPUT_A = CODEBOOK_SIZE + 2
ANSWER_A = CODEBOOK_SIZE + 3
SPLIT = CODEBOOK_SIZE + 4

VOCAB_PADDED = TEXT_VOCAB_PADDED + AUDIO_LAYERS * AUDIO_LAYER_VOCAB  # 181120 rows


def audio_offset(layer: int) -> int:
    """First row of audio layer `layer` in the shared table and head."""
    return TEXT_VOCAB_PADDED + layer * AUDIO_LAYER_VOCAB


def layer_shift(local_id: int, layer: int) -> int:
    """A layer-local audio id (0..4159) as a row of the shared table."""
    return local_id + audio_offset(layer)


def audio_delay(layer: int) -> int:
    """Steps by which audio layer `layer` lags the text stream (delayed-parallel decoding)."""
    return layer + 1


MAX_AUDIO_DELAY = audio_delay(AUDIO_LAYERS - 1)  # 7: steps before the first frame completes

# --- SNAC 24 kHz frames ---------------------------------------------------------------------
OUTPUT_SAMPLE_RATE_HZ = 24_000
SNAC_HOP_SAMPLES = 512  # samples per finest-level SNAC code
SNAC_VQ_STRIDES = (4, 2, 1)  # coarse, mid, fine: codes per frame are 4 // stride
SNAC_STEPS_PER_FRAME = SNAC_VQ_STRIDES[0]  # finest-level SNAC steps (decoder latents) per frame
FRAME_SAMPLES = SNAC_HOP_SAMPLES * SNAC_STEPS_PER_FRAME  # 2048 samples per decode step
FRAME_MS = 1000 * FRAME_SAMPLES / OUTPUT_SAMPLE_RATE_HZ  # 85.33 ms of speech per step
REALTIME_STEPS_PER_S = 1000 / FRAME_MS  # 11.72 decode steps per second keep up with speech

# Which SNAC codebook each audio layer feeds, and in what order within a frame:
# coarse <- L0; mid <- L1, L4; fine <- L2, L3, L5, L6.
SNAC_LAYERS_PER_LEVEL = ((0,), (1, 4), (2, 3, 5, 6))
assert sum(len(level) for level in SNAC_LAYERS_PER_LEVEL) == AUDIO_LAYERS

# --- Whisper input --------------------------------------------------------------------------
INPUT_SAMPLE_RATE_HZ = 16_000
WHISPER_FRAME_MS = 20  # one encoder frame per 20 ms (mel hop 10 ms, conv stride 2)
WHISPER_FRAME_SAMPLES = INPUT_SAMPLE_RATE_HZ * WHISPER_FRAME_MS // 1000  # 320
WHISPER_MAX_FRAMES = 1500  # the encoder's positional table: 30 s
WHISPER_MAX_SECONDS = WHISPER_MAX_FRAMES * WHISPER_FRAME_MS / 1000


def whisper_frames(num_samples: int) -> int:
    """Feature frames the reference keeps for `num_samples` of 16 kHz audio: int(ms / 20) + 1."""
    duration_ms = num_samples / INPUT_SAMPLE_RATE_HZ * 1000
    return int(duration_ms / WHISPER_FRAME_MS) + 1


# --- Whisper log-mel front end (openai-whisper's audio.py) -----------------------------------
MEL_HOP_MS = 10
MEL_HOP_SAMPLES = INPUT_SAMPLE_RATE_HZ * MEL_HOP_MS // 1000  # 160
MEL_WINDOW_SAMPLES = 400  # n_fft: a 25 ms Hann window centred on each hop
MEL_FRAMES_PER_WHISPER_FRAME = WHISPER_FRAME_MS // MEL_HOP_MS  # 2: conv2's stride
WHISPER_MEL_FRAMES = WHISPER_MAX_FRAMES * MEL_FRAMES_PER_WHISPER_FRAME  # 3000
WHISPER_INPUT_SAMPLES = WHISPER_MEL_FRAMES * MEL_HOP_SAMPLES  # 480000: pad_or_trim's 30 s
# The longest input whose whisper_frames() still fits the positional table: exactly 30 s would
# ask for 1501 frames.
WHISPER_MAX_SAMPLES = WHISPER_INPUT_SAMPLES - 1
