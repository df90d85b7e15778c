"""The token layout the kernels read ids and the head's rows in, given by the model.

One embedding table and one head cover every stream: `text_vocab` text ids first, then
`audio_layers` ranges of `audio_vocab` ids each (an audio id is layer-local: row
text_vocab + layer * audio_vocab + id of the table). A step's ids are (..., streams): the audio
layers in order, then the text. The kernels take the layout as an argument, so this package
knows no model; the caller builds one from its own token constants.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLayout:
    """Where each stream's ids sit in the shared table, and the ids the decode rules test."""

    text_vocab: int  # text ids, padded: the first audio row
    audio_vocab: int  # ids per audio layer
    audio_layers: int
    pad_t: int  # text: nothing to say (forced after eot)
    eot: int  # text: end of text
    pad_a: int  # audio (layer-local): silence of a row that does not speak
    eoa: int  # audio (layer-local): end of audio

    @property
    def streams(self) -> int:
        """Ids per step: one per audio layer, then the text."""
        return self.audio_layers + 1

    @property
    def text_stream(self) -> int:
        """The text's index among the streams: the last."""
        return self.audio_layers

    @property
    def vocab(self) -> int:
        """Rows of the table and the head."""
        return self.text_vocab + self.audio_layers * self.audio_vocab
