"""The network side: one folder per door (webrtc, openai, twilio), what they share, and the
audio formats they carry. Async code on the event loop; the model runs on the engine's thread."""
