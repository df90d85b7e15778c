"""How a request is decoded: the sampling options, which encoder, whose products.

Chosen per request or per server, unlike the model's dimensions (realtime/model/config.py),
which travel with the checkpoint. No logic here; the modules they configure hold it.
"""

from dataclasses import dataclass

# How speech becomes whisper features: "exact" pads to 30 s as the reference does (and waits for
# the end of the utterance); "chunked" encodes 2 s blocks as the caller talks.
ENCODER_MODES = ("exact", "chunked")
# Whose products the GPU decode step runs: torch's F.linear, or kernels/gemv.py with the ops
# around them fused in (realtime/decoding/gpu/step.py); "auto" times both (each also launched as
# programmatic dependents, where the GPU can) at each batch bucket when the decoder is built
# and runs the fastest
STEP_PRODUCTS = ("cublas", "fused")
STEP_PRODUCT_CHOICES = (*STEP_PRODUCTS, "auto")


@dataclass(frozen=True)
class DecodingOptions:
    """How one request is decoded. The defaults are the reference's: top_k 1 makes it greedy."""

    temperature: float = 0.9
    top_k: int | None = 1
    top_p: float = 1.0
    max_new_tokens: int | None = None  # None: until a stop token or the context is full
    seed: int = 0
