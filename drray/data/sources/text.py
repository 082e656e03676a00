"""Text data sets: plain text files and JSON lines cut into byte-token sequences, and Parquet
with a `text` column (drray.data.parquet). Rows are stored as int16 token ids [N, L] (drray.data.tokenizer) in
ExampleSet.rows, with zero labels: language modelling has no label.

Source `text`: every file in data.dir matching data.pattern (.gz read transparently). A `.jsonl`
file is one document per line, its text in the field data.text_field (a `wikitext` field is
stripped of its markup first); any other file is one plain-text document. Documents are cut into
paragraphs (blank-line separated) and paragraphs into sequences of whole words of at most
data.seq_len bytes; sequences shorter than a quarter of that are dropped.
"""
from __future__ import annotations

import gzip
import html
import json
import re
from pathlib import Path
from typing import Iterator

from drray.config import DataConfig
from drray.data.examples import text_examples
from drray.data.sources.paths import existing_data_dir
from drray.errors import DataError
from drray.registry import DATA_SOURCES

END_SECTIONS = re.compile(r"^==+\s*(References|External links|See also|Notes|Further reading|Bibliography|"
                          r"Sources|Citations)\s*==+\s*$", re.MULTILINE | re.IGNORECASE)


COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>|<gallery[^>]*>.*?</gallery>", re.DOTALL | re.IGNORECASE)


TAG = re.compile(r"<[^<>]+>")


TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")


TABLE = re.compile(r"\{\|.*?\|\}", re.DOTALL)


INNER_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")


EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+\s*([^\]]*)\]")


EMPHASIS = re.compile(r"'{2,}")


HEADING = re.compile(r"^=+.*=+\s*$", re.MULTILINE)


NON_LINK_NAMESPACES = ("file:", "image:", "category:", "media:")


def _link_text(match: re.Match) -> str:
    target = match.group(1)
    if target.lower().startswith(NON_LINK_NAMESPACES) or ":" in target.split("|")[0][1:]:
        return ""  # images, categories and interlanguage links carry no running text
    return target.split("|")[-1]


def _until_stable(pattern: re.Pattern, replace, text: str) -> str:
    """Apply a substitution until nothing changes: nested {{...}} and [[...]] go innermost first."""
    for _ in range(50):
        new = pattern.sub(replace, text)
        if new == text:
            break
        text = new
    return text


def wikitext_to_text(wikitext: str) -> str:
    """Plain running text from MediaWiki markup: templates, references, tables, files, headings and
    the reference sections go; links and emphasis keep their words."""
    text = html.unescape(html.unescape(wikitext))  # the dump escapes markup, and some entities twice
    end = END_SECTIONS.search(text)
    text = text[: end.start()] if end else text
    text = REF.sub("", COMMENT.sub("", text))
    text = _until_stable(TEMPLATE, "", text)
    text = TABLE.sub("", text)
    text = _until_stable(INNER_LINK, _link_text, text)
    text = TAG.sub("", EXTERNAL_LINK.sub(r"\1", text))
    text = HEADING.sub("", EMPHASIS.sub("", text))
    lines = []
    for line in text.splitlines():
        line = re.sub(r"[ \t\u00a0]+", " ", line.lstrip("*#:; ")).strip()
        if line.startswith(("|", "!", "{", "}", "File:", "Image:")) or "{{" in line or "}}" in line:
            continue  # remnants of tables and unbalanced templates
        lines.append(line)
    return "\n".join(lines)


WORD = re.compile(r"\S+\s*")


def paragraph_sequences(paragraph: str, seq_len: int) -> Iterator[str]:
    """Consecutive whole words (with their spacing and line breaks) packed into pieces of at most
    seq_len UTF-8 bytes; a word longer than that is a piece of its own (cut when encoded)."""
    piece, size = [], 0
    for word in WORD.findall(paragraph):
        n = len(word.encode("utf-8"))
        if piece and size + len(word.rstrip().encode("utf-8")) > seq_len:
            yield "".join(piece).rstrip()
            piece, size = [], 0
        piece.append(word)
        size += n
    if piece:
        yield "".join(piece).rstrip()


def document_sequences(document: str, seq_len: int) -> Iterator[str]:
    min_bytes = max(2, seq_len // 4)
    for paragraph in re.split(r"\n\s*\n", document):
        for sequence in paragraph_sequences(paragraph.strip(), seq_len):
            if len(sequence.encode("utf-8")) >= min_bytes:
                yield sequence


def _read_text(path: Path) -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as (gzipped) UTF-8 text ({exc}); check the file".replace("\n", " ")) from None


def read_documents(path: Path, text_field: str) -> Iterator[str]:
    """A .jsonl[.gz] file: one document per record (field text_field); any other file: one document."""
    text = _read_text(path)
    if ".jsonl" not in path.suffixes:
        yield text
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not a JSON object ({exc.msg}); fix the line") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise DataError(f"{path}:{number}: no string field {text_field!r}; set data.text_field to the field "
                            "that holds the text")
        value = record[text_field]
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON may escape half a surrogate pair ("\ud83d"): not a character
            raise DataError(f"{path}:{number}: field {text_field!r} holds an unpaired surrogate "
                            f"({value[exc.start]!r} at character {exc.start}), not valid Unicode; fix the line") from None
        yield wikitext_to_text(value) if text_field == "wikitext" else value


def text_files(cfg: DataConfig) -> list[Path]:
    directory = existing_data_dir(cfg, "a folder of .txt[.gz] / .jsonl[.gz] files")
    pattern = cfg.pattern or "*"
    try:
        files = sorted(p for p in directory.glob(pattern) if p.is_file())
    except (NotImplementedError, ValueError) as exc:  # an absolute or empty pattern
        raise DataError(f"data.pattern {pattern!r}: {exc}; give a glob relative to data.dir (e.g. '*.txt.gz')") from None
    if not files:
        raise DataError(f"{directory / pattern}: no files match; set data.pattern (e.g. '*.txt.gz')")
    return files


def sequences_from_files(cfg: DataConfig) -> list[str]:
    return [sequence for path in text_files(cfg) for document in read_documents(path, cfg.text_field)
            for sequence in document_sequences(document, cfg.seq_len)]


@DATA_SOURCES.register("text")
def load_text_source(cfg: DataConfig):
    """Plain text and JSON-lines files under data.dir, as sequences of data.seq_len bytes."""
    sequences = sequences_from_files(cfg)
    if not sequences:
        raise DataError(f"data.dir {cfg.dir}: the files hold no sequence of {max(2, cfg.seq_len // 4)}+ bytes; "
                        "check data.pattern and data.text_field")
    return text_examples(sequences, cfg.seq_len), None
