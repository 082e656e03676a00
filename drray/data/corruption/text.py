"""Corruptions of text sequences that look like the web, as corruption kinds (drray.data.corruption).

Each kind takes token rows [n, L] (drray.data.tokenizer) and returns new rows, unchanged labels and a
level in [0, 1] per row (the share of the sequence that is corrupt). Rows are decoded to text,
corrupted as text and encoded again (cut to L bytes), so every row stays valid UTF-8 and writes
to Parquet as a string. All randomness comes from the rng passed in: fixed for a seed.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

from drray.data.tokenizer import decode, encode, fit_utf8
from drray.registry import CORRUPTIONS

TextCorruption = Callable[[str, np.random.Generator, int], tuple[str, float]]


def text_kind(name: str):
    """Register fn(text, rng, seq_len) -> (corrupted text, level) as a corruption kind for text."""
    def decorate(corrupt_text: TextCorruption):
        def corrupt_rows(tokens: np.ndarray, labels: np.ndarray, num_classes: int, rng: np.random.Generator):
            out, level = tokens.copy(), np.zeros(len(tokens), dtype=np.float32)
            for row in range(len(tokens)):
                text, level[row] = corrupt_text(decode(tokens[row]), rng, tokens.shape[1])
                out[row] = encode(text, tokens.shape[1])
            return out, labels.copy(), level

        corrupt_rows.modality = "text"
        corrupt_rows.__doc__ = corrupt_text.__doc__
        corrupt_rows.corrupt_text = corrupt_text  # the per-text function, for tests and tools
        return CORRUPTIONS.register(name)(corrupt_rows)

    return decorate


def _shown(text: str, seq_len: int) -> str:
    """The part of `text` that survives the cut to seq_len bytes."""
    return fit_utf8(text.encode("utf-8"), seq_len).decode("utf-8")


@text_kind("random_bytes")
def random_bytes(text: str, rng: np.random.Generator, seq_len: int) -> tuple[str, float]:
    """A contiguous run over 30-100% of the bytes is replaced by random bytes, read as UTF-8 the
    way a browser shows a binary blob (invalid bytes become U+FFFD)."""
    data = text.encode("utf-8") or b" "  # an empty row still gets its garbage
    span = max(1, int(round(rng.uniform(0.3, 1.0) * len(data))))
    start = int(rng.integers(0, len(data) - span + 1))
    junk = rng.integers(0, 256, size=span, dtype=np.uint8).tobytes()
    corrupted = data[:start].decode("utf-8", "replace") + junk.decode("utf-8", "replace") + \
        data[start + span:].decode("utf-8", "replace")
    return corrupted, span / len(data)


TYPOGRAPHY = (("--", "\u2014"), ("'", "\u2019"), ('"', "\u201d"))
ACCENTED = {"a": "\u00e0", "e": "\u00e9", "i": "\u00ef", "o": "\u00f4", "u": "\u00fc", "c": "\u00e7"}


@text_kind("mojibake")
def mojibake(text: str, rng: np.random.Generator, seq_len: int) -> tuple[str, float]:
    """UTF-8 read as latin-1 and encoded again ("don’t" -> "donâ\\x80\\x99t"). Typographic quotes and
    dashes, as web pages have them, come first; a text with fewer than three non-ASCII characters
    gets accented letters, so there is always something to garble."""
    for plain, fancy in TYPOGRAPHY:
        text = text.replace(plain, fancy)
    missing = 3 - sum(not ch.isascii() for ch in text)
    if missing > 0:  # accent a few letters (names, loanwords) so there is something to garble
        vowels = [i for i, ch in enumerate(text) if ch in ACCENTED] or [0]
        for i in rng.choice(vowels, min(missing, len(vowels)), replace=False):
            text = text[:i] + ACCENTED.get(text[i:i + 1], "\u00e9") + text[i + 1:]
    garbled = text.encode("utf-8").decode("latin-1")
    shown = _shown(garbled, seq_len)
    return garbled, sum(not ch.isascii() for ch in shown) / max(1, len(shown))


@text_kind("shuffled_words")
def shuffled_words(text: str, rng: np.random.Generator, seq_len: int) -> tuple[str, float]:
    """The words in a random order; the spacing and line breaks between them stay where they were."""
    parts = re.split(r"(\s+)", text)
    words = parts[0::2]
    order = rng.permutation(len(words))
    if len(words) > 1 and np.array_equal(order, np.arange(len(words))):
        order = np.roll(order, 1)  # the identity permutation would leave the row clean
    parts[0::2] = [words[i] for i in order]
    return "".join(parts), float(np.mean([words[i] != word for i, word in zip(order, words)]))


BOILERPLATE = (
    "Home | About us | Contact | Privacy Policy | Terms of Use",
    "Copyright \u00a9 {year} {site}. All rights reserved.",
    '<div class="{cls}"><a href="/{path}">{word}</a></div>',
    '<script type="text/javascript" src="/static/js/{path}.min.js"></script>',
    "Click here to subscribe to our newsletter!",
    "Share this: Facebook Twitter Pinterest Email Print",
    "Posted by admin on {day}/{month}/{year} | {n} comments",
    "Cookies help us deliver our services. By using our services, you agree to our use of cookies.",
    "<tr><td>{word}</td><td>{n}</td></tr>",
    "Skip to main content \u00bb Menu \u00bb Search",
    "Loading... Please wait. [Read more]",
    "&nbsp;&nbsp;<br/><br/>&nbsp;",
)
FILLERS = ("news", "blog", "post", "main", "footer", "header", "sidebar", "widget", "item", "login")


def boilerplate_line(rng: np.random.Generator) -> str:
    template = BOILERPLATE[int(rng.integers(len(BOILERPLATE)))]
    pick = lambda: FILLERS[int(rng.integers(len(FILLERS)))]  # noqa: E731
    return template.format(year=int(rng.integers(1998, 2025)), site=pick().title() + ".com", cls=pick(),
                           path=pick(), word=pick().title(), day=int(rng.integers(1, 29)),
                           month=int(rng.integers(1, 13)), n=int(rng.integers(0, 500)))


def _share_of(added: int, text: str, seq_len: int) -> float:
    return min(1.0, added / max(1, len(_shown(text, seq_len).encode("utf-8"))))


@text_kind("markup_lines")
def markup_lines(text: str, rng: np.random.Generator, seq_len: int) -> tuple[str, float]:
    """One to three lines of HTML, navigation or cookie boilerplate put on lines of their own at the
    start or between words of the first half of what seq_len shows (so the cut keeps them), as scraped
    pages carry them."""
    shown = _shown(text, seq_len)
    gaps = [0] + [m.start() for m in re.finditer(r"\s", shown[: len(shown) // 2])]
    chosen = rng.choice(gaps, min(len(gaps), int(rng.integers(1, 4))), replace=False)
    added = 0
    for at in sorted(chosen, reverse=True):  # right to left: earlier positions stay valid
        line = boilerplate_line(rng)
        if at == 0:
            text = line + "\n" + text
        else:  # the blank at `at` becomes the line break before the inserted line
            text = text[:at] + "\n" + line + "\n" + text[at + 1:]
        added += len(line.encode("utf-8")) + 1
    return text, _share_of(added, text, seq_len)


@text_kind("repeated_lines")
def repeated_lines(text: str, rng: np.random.Generator, seq_len: int) -> tuple[str, float]:
    """A short line repeated line after line to fill the sequence, like a page whose template
    printed the same line over and over: one of the text's lines, or a run of its words, short
    enough (a third of seq_len) that at least three copies show."""
    longest = max(8, seq_len // 3)
    lines = [line.strip() for line in text.split("\n") if 0 < len(line.strip().encode("utf-8")) <= longest]
    if lines:
        line = lines[int(rng.integers(len(lines)))]
    else:
        words = text.split() or ["-"]  # a blank row repeats a dash line
        start = int(rng.integers(len(words)))
        line = words[start]
        for word in words[start + 1: start + int(rng.integers(3, 11))]:
            if len(f"{line} {word}".encode("utf-8")) > longest:
                break
            line = f"{line} {word}"
    repeats = max(3, -(-seq_len // (len(line.encode("utf-8")) + 1)))
    return "\n".join([line] * repeats), 1.0


CONTROL = "".join(chr(c) for c in (*range(0, 9), 11, 12, *range(14, 32), 127))
BLANKS = " \t\n"


@text_kind("whitespace_runs")
def whitespace_runs(text: str, rng: np.random.Generator, seq_len: int) -> tuple[str, float]:
    """Two to five runs of blanks (spaces, tabs, newlines; 5-30 long) or of non-printable control
    characters (2-10 long) put between words."""
    gaps = [m.start() for m in re.finditer(r"\s+", text)] or [len(text)]
    added = 0
    for _ in range(int(rng.integers(2, 6))):
        at = gaps[int(rng.integers(len(gaps)))]
        alphabet, length = (BLANKS, rng.integers(5, 31)) if rng.random() < 0.5 else (CONTROL, rng.integers(2, 11))
        run = "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), size=int(length)))
        text = text[:at] + run + text[at:]
        gaps = [g + len(run) if g >= at else g for g in gaps]
        added += len(run)
    return text, _share_of(added, text, seq_len)
