"""Audio in and out of the model: files and PCM, the whisper encoder (speech to features) and
the SNAC vocoder (codes to 24 kHz speech, streamed exactly)."""
