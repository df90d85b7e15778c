"""The engine: one inference thread serving every live session in batched steps, and what it
tells each session's owner."""
