"""A byte-level tokenizer: token i < 256 is the byte i, PAD = 256. No vocabulary file, nothing to
download, and every string round-trips exactly (the bytes are its UTF-8 encoding).

A sequence is cut to at most `length` bytes at a character boundary (a multi-byte character is
never split), so decode(encode(text)) is always valid UTF-8: the text itself when it fits.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

PAD = 256
VOCAB_SIZE = 257  # 256 byte values and PAD
TOKEN_DTYPE = np.int16  # PAD does not fit in uint8


def fit_utf8(data: bytes, length: int) -> bytes:
    """The longest prefix of `data` of at most `length` bytes that ends on a character boundary."""
    if len(data) <= length:
        return data
    end = length
    while end > 0 and (data[end] & 0xC0) == 0x80:  # data[end] continues a character: step back
        end -= 1
    return data[:end]


def encode(text: str, length: int) -> np.ndarray:
    """int16 [length]: the UTF-8 bytes of `text` (cut at a character boundary), then PAD."""
    data = fit_utf8(text.encode("utf-8"), length)
    tokens = np.full(length, PAD, dtype=TOKEN_DTYPE)
    tokens[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return tokens


def encode_batch(texts: Iterable[str], length: int) -> np.ndarray:
    texts = list(texts)
    out = np.full((len(texts), length), PAD, dtype=TOKEN_DTYPE)
    for row, text in enumerate(texts):
        out[row] = encode(text, length)
    return out


def token_bytes(tokens: np.ndarray) -> bytes:
    """The bytes of one sequence: its tokens before the first PAD."""
    tokens = np.asarray(tokens)
    pads = np.flatnonzero(tokens == PAD)
    return tokens[: pads[0] if len(pads) else len(tokens)].astype(np.uint8).tobytes()


def decode(tokens: np.ndarray) -> str:
    """The text of one sequence (undecodable bytes, which encode never makes, become U+FFFD)."""
    return token_bytes(tokens).decode("utf-8", errors="replace")


def lengths(tokens: np.ndarray) -> np.ndarray:
    """Number of non-PAD tokens per row of [N, L]."""
    return (np.asarray(tokens) != PAD).sum(axis=-1)
