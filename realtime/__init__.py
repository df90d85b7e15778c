"""A low-latency, full-duplex voice agent server for the Mini-Omni speech models.

One folder per stage, in the order a caller's voice goes through them:

    transports/   the network doors: webrtc/ (browser), openai/ (OpenAI Realtime WebSockets),
                  twilio/ (phone calls); the audio formats they carry (wire_audio.py)
        |  16 kHz speech
    turns/        turn detection: speech started, turn ended (webrtcvad, hangover, pre-roll)
        |  the turn's audio, while the caller talks
    engine/       one inference thread: every live session, batched; events back to the doors
        |
    audio/        encoder.py: whisper features, in 2 s blocks as the caller talks
    decoding/     delayed-parallel steps (1 text + 7 audio tokens a step), sampling, the GPU step
    model/        the language model, its tokens, prompts, tokenizer and checkpoints
        |  7 SNAC codes a frame
    audio/        vocoder.py: SNAC frames to 24 kHz speech, streamed exactly
        |
    transports/   paced back to the caller; an interrupt flushes playout and cancels decoding

`device/` holds how torch runs on the machine (CPU thread pools, CUDA graph capture); the
top-level `kernels` package our C and Triton kernels. Imports run one way, from the doors down
to the model (tests/test_imports.py). `cli.py` is the `realtime` command (`cli_args.py` its
options), `server.py` the web server of `realtime serve`.

The Python API, imported when first used: `Engine`, `EngineOptions`, `SessionOptions` (many
live sessions on one model), `Runtime`, `Request` (one request end to end), `DecodingOptions`,
`ServerOptions` and `serve`.
"""

import importlib

_API = {
    "Engine": "realtime.engine.engine",
    "EngineOptions": "realtime.engine.engine",
    "SessionOptions": "realtime.engine.session",
    "Runtime": "realtime.decoding.runtime",
    "Request": "realtime.decoding.runtime",
    "DecodingOptions": "realtime.decoding.options",
    "ServerOptions": "realtime.server_config",
    "serve": "realtime.server",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    """The API's names load their modules on first use, so `import realtime` stays cheap."""
    if name not in _API:
        raise AttributeError(f"module 'realtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
