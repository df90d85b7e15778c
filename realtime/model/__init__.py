"""The model: its dimensions, token layout, prompts, tokenizer, checkpoints and the language
model itself (a Qwen2 decoder over 8 token streams)."""
