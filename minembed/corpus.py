"""Reading a user's corpus: documents streamed from a file, never all in memory twice.

Formats:
  lines       one document per line (the default); blank lines are skipped
  paragraphs  documents separated by blank lines; a paragraph's lines are joined by spaces
  jsonl       one JSON object per line with a "text" field and an optional "label"
Any of them may be gzip-compressed (``.gz``). ``auto`` picks jsonl for
``.jsonl``/``.jsonl.gz`` and lines otherwise.

Bad input raises MinembedError with a one-line message naming the file and line:
a missing or empty file, bytes that are not UTF-8, binary content (NUL bytes),
a document longer than ``max_doc_chars`` (read with a bounded ``readline``, so a
line of gigabytes is refused without being loaded), malformed JSON.
"""
import gzip
import json
import os
import re
import zlib

from .errors import MinembedError

FORMATS = ("auto", "lines", "paragraphs", "jsonl")
MAX_DOC_CHARS = 1_000_000  # a "document" longer than this is almost surely not one


def resolve_format(path, fmt="auto"):
    if fmt not in FORMATS:
        raise MinembedError(f"unknown corpus format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if fmt != "auto":
        return fmt
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return "jsonl" if name.endswith((".jsonl", ".ndjson")) else "lines"


def _open_binary(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MinembedError(f"corpus file not found: {path}")
    if os.path.isdir(path):
        raise MinembedError(f"corpus path is a directory, not a file: {path}")
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


_LONE_CR = re.compile(r"\r(?!\n)")


def _raw_lines(path, max_doc_chars, lone_cr=True):
    """Yield (line_number, str) for each line, decoded and checked.

    readline(limit) returns at most ``limit`` bytes, so an endless line is
    detected after reading max bytes, not after reading all of it. Lines end
    at \\n, \\r\\n, and with ``lone_cr`` at a lone \\r too (old Mac files, and
    files that mix them; not in JSON Lines, where \\r is whitespace).
    """
    limit = 4 * max_doc_chars + 1  # a UTF-8 character is at most 4 bytes
    try:
        with _open_binary(path) as f:
            n = 0
            while True:
                raw = f.readline(limit)
                if not raw:
                    return
                n += 1
                if len(raw) == limit and not raw.endswith(b"\n"):
                    raise _too_long(path, n, max_doc_chars)
                if b"\x00" in raw:
                    raise MinembedError(f"{path}: line {n} contains NUL bytes: "
                                        f"this looks like a binary file, not UTF-8 text")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise MinembedError(f"{path}: line {n} is not valid UTF-8 "
                                        f"(byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
                if n == 1:
                    line = line.lstrip("\ufeff")  # a byte-order mark is not text
                if lone_cr and "\r" in line and _LONE_CR.search(line):
                    for part in _LONE_CR.split(line):
                        yield n, part
                else:
                    yield n, line
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise MinembedError(f"cannot read {path}: {e}") from None


def _clean(text):
    # mixed newlines, tabs and other whitespace runs become single spaces
    return " ".join(text.split())


def _too_long(path, n, max_doc_chars):
    return MinembedError(f"{path}: line {n} is longer than {max_doc_chars:,} characters "
                         f"(not a document per line? try --format paragraphs, or raise --max-doc-chars)")


def iter_documents(path, fmt="auto", max_doc_chars=MAX_DOC_CHARS):
    """Yield (text, label) for every non-empty document; label is None unless
    the corpus is jsonl with a "label" field."""
    fmt = resolve_format(path, fmt)
    lines = _raw_lines(path, max_doc_chars, lone_cr=fmt != "jsonl")
    if fmt == "lines":
        for n, line in lines:
            text = _clean(line)
            if len(text) > max_doc_chars:
                raise _too_long(path, n, max_doc_chars)
            if text:
                yield text, None
    elif fmt == "paragraphs":
        buf, size = [], 0
        for n, line in lines:
            if line.strip():
                buf.append(line)
                size += len(line)
                if size > max_doc_chars:
                    raise MinembedError(f"{path}: the paragraph ending at line {n} is longer than "
                                        f"{max_doc_chars:,} characters (raise --max-doc-chars)")
            elif buf:
                yield _clean(" ".join(buf)), None
                buf, size = [], 0
        if buf:
            yield _clean(" ".join(buf)), None
    else:
        for n, line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as e:  # ValueError: also numbers of 1000s of digits
                why = e.msg if isinstance(e, json.JSONDecodeError) else \
                    "nested too deeply" if isinstance(e, RecursionError) else str(e).split(":")[0]
                raise MinembedError(f"{path}: line {n} is not valid JSON ({why})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise MinembedError(f'{path}: line {n} has no "text" string field')
            text = _clean(obj["text"])
            if len(text) > max_doc_chars:
                raise _too_long(path, n, max_doc_chars)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise MinembedError(f'{path}: line {n}: "text" holds a lone surrogate escape '
                                    f'(\\ud800-\\udfff), which is not a character') from None
            label = obj.get("label")
            if text:
                yield text, (None if label is None else str(label))


def read_corpus(path, fmt="auto", max_doc_chars=MAX_DOC_CHARS):
    """All documents in memory: (texts, labels), labels None when the corpus has none.

    For evaluation, search and maps (corpora that fit in memory); training streams.
    """
    texts, labels = [], []
    for text, label in iter_documents(path, fmt, max_doc_chars):
        texts.append(text)
        labels.append(label)
    if not texts:
        raise MinembedError(f"{path}: no documents found (the file is empty or blank)")
    if all(lab is None for lab in labels):
        return texts, None
    if any(lab is None for lab in labels):
        missing = sum(lab is None for lab in labels)
        raise MinembedError(f'{path}: {missing} of {len(labels)} documents have no "label"; '
                            f'label all of them or none')
    return texts, labels
