"""The streaming SNAC decoder against the whole decode, over decoder layouts and chunk sizes."""

import itertools

import pytest
import torch
from snac.layers import Decoder, Snake1d

from realtime.audio.snac_stream import StreamingDecoder, _ConvTranspose, _Snake
from realtime.audio.vocoder import disable_noise

LATENT_DIM = 16
# (channels, rates, depthwise): SNAC 24 kHz's layout at toy width; a plain (not depthwise)
# first convolution; odd strides, whose transposed convolutions pad their output.
LAYOUTS = [(32, (8, 8, 4, 2), True), (16, (3, 2), False), (24, (5, 3, 7), True)]


def random_decoder(channels: int, rates: tuple[int, ...], depthwise: bool) -> Decoder:
    torch.manual_seed(0)
    decoder = Decoder(
        LATENT_DIM, channels, list(rates), noise=True, depthwise=depthwise, attn_window_size=None
    )
    disable_noise(decoder)
    for module in decoder.modules():  # away from Snake's default alpha of 1
        if hasattr(module, "alpha"):
            module.alpha.data.uniform_(0.5, 2.0)
    return decoder.eval()


def stream(
    decoder: Decoder, latents: torch.Tensor, chunk: int, first: int = 0, products: bool = True
) -> torch.Tensor:
    """Feed (B, C, T) latents `chunk` steps at a time (after a `first` chunk), then drain."""
    streaming = StreamingDecoder(decoder, products)
    state = torch.stack([streaming.new_state("cpu", torch.float32)] * len(latents))
    length = latents.shape[-1]
    padded = torch.nn.functional.pad(latents, (0, streaming.tail_latents))
    bounds = [0, *range(first or chunk, padded.shape[-1], chunk), padded.shape[-1]]
    outputs = []
    for start, stop in itertools.pairwise(bounds):
        ends = [length] * len(latents) if stop > length else None
        outputs.append(streaming(padded[..., start:stop], state, [start] * len(latents), ends))
    lag = streaming.lag
    return torch.cat(outputs, dim=-1)[..., lag : lag + length * streaming.samples_per_latent]


# The convolutions as a GPU runs them, and as matrix products (a CPU's default).
@pytest.mark.parametrize("products", [False, True], ids=["convolutions", "products"])
@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_stream_equals_whole_decode(batch, layout, chunk, products):
    decoder = random_decoder(*layout)
    latents = torch.randn(batch, LATENT_DIM, 13, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = decoder(latents)
    streamed = stream(decoder, latents, chunk, first=3, products=products)
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-5 * whole.abs().max().item())


def test_products_are_a_cpus_default():
    decoder = random_decoder(*LAYOUTS[0])  # on the CPU

    def upsampling(streaming: StreamingDecoder) -> list[bool]:
        return [op.product for op in streaming.ops if isinstance(op, _ConvTranspose)]

    assert upsampling(StreamingDecoder(decoder)) == [True] * 4
    assert upsampling(StreamingDecoder(decoder, products=False)) == [False] * 4


def test_snake_gives_the_modules_bits():
    decoder = random_decoder(*LAYOUTS[0])
    snake = next(m for m in decoder.modules() if isinstance(m, Snake1d))
    x = torch.randn(2, snake.alpha.shape[1], 50, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours = _Snake(snake)(x, None, None)
        assert torch.equal(ours, snake(x))


def test_lag_and_state_follow_the_layout():
    # 24 kHz layout: 3 (first conv) + per block 3 + 9 + 27 (residual units) at its rate, the
    # transposed convolutions' padding s/2, and 3 for the last conv, in output samples.
    streaming = StreamingDecoder(random_decoder(32, (8, 8, 4, 2), True))
    assert streaming.samples_per_latent == 8 * 8 * 4 * 2
    assert streaming.lag == ((((3 * 8 + 4 + 39) * 8 + 4 + 39) * 4 + 2 + 39) * 2 + 1 + 39) + 3
    assert streaming.tail_latents == -(-streaming.lag // streaming.samples_per_latent)


def test_layers_it_cannot_stream_are_refused():
    attention = Decoder(LATENT_DIM, 32, [2, 2], attn_window_size=4)
    with pytest.raises(ValueError, match="LocalMHA"):
        StreamingDecoder(attention)
    causal = torch.nn.Sequential(torch.nn.Conv1d(4, 4, kernel_size=3, padding=0))
    with pytest.raises(ValueError, match="same"):
        StreamingDecoder(causal)
