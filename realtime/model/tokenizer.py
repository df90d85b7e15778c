"""Text tokens: the checkpoint's tokenizer, a small real BPE for test models, and streaming
detokenization that never emits half a UTF-8 character."""

from importlib import resources
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Qwen2's pre-tokenizer split: contractions, letter runs, single digits, punctuation runs, spaces.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
END_OF_TEXT = "<|endoftext|>"  # Qwen2's eos, named by tokenizer_config.json
CHAT_SPECIALS = (END_OF_TEXT, "<|im_start|>", "<|im_end|>")

# What tokenizer_config.json says for a Qwen2 tokenizer (the reference reads bos/eos from it).
QWEN2_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": None,
    "eos_token": END_OF_TEXT,
    "pad_token": END_OF_TEXT,
    "errors": "replace",
    "model_max_length": 32768,
    "tokenizer_class": "Qwen2Tokenizer",
    "clean_up_tokenization_spaces": False,
}


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a Hugging Face `tokenizer.json`."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises bare Exceptions for bad files
        raise ValueError(f"cannot read tokenizer {path}: {exc}") from exc


def train_small_bpe(vocab_size: int) -> Tokenizer:
    """A byte-level BPE laid out like Qwen2's, trained on a small bundled English corpus.

    Deterministic: the same vocabulary on every machine, so test checkpoints are reproducible.
    """
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(CHAT_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = resources.files("realtime.model.assets").joinpath("bpe_corpus.txt").read_text("utf-8")
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    return tok


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Byte-level BPE splits multi-byte characters across tokens; decoding such a prefix yields
    U+FFFD. We hold text back until it decodes cleanly, and re-decode from a short prefix so the
    tokenizer's own spacing rules apply at the seam.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # start of the ids re-decoded for context
        self._read = 0  # ids before this are already emitted

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (often "", never half a character)."""
        self.ids.append(token_id)
        return self._delta(final=False)

    def flush(self) -> str:
        """Return whatever is still held back (an unfinished character becomes U+FFFD)."""
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        seen = self._tokenizer.decode(self.ids[self._prefix : self._read])
        full = self._tokenizer.decode(self.ids[self._prefix :])
        if (full.endswith("\ufffd") and not final) or len(full) <= len(seen):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return full[len(seen) :]
