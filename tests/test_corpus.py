"""Corpus readers: formats, compression, and a clear error for each bad input."""
import gzip
import json

import pytest

from minembed.product.corpus import MAX_DOC_CHARS, Corpus, iter_documents, resolve_format
from minembed.errors import MinembedError


def read_corpus(path, fmt="auto", max_doc_chars=MAX_DOC_CHARS):
    return Corpus(path, fmt, max_doc_chars).read()


def docs(path, fmt="auto", **kw):
    return list(iter_documents(path, fmt, **kw))


def test_lines_skip_blank_and_clean_whitespace(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes("\ufefffirst  doc\t here\r\n\n   \nsecond doc\n third".encode("utf-8"))
    assert docs(p) == [("first doc here", None), ("second doc", None), ("third", None)]


def test_paragraphs(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("line one\nline two\n\n\npara two\n\nlast\nlines")
    assert [t for t, _ in docs(p, "paragraphs")] == ["line one line two", "para two", "last lines"]


def test_jsonl_with_labels_and_gzip(tmp_path):
    p = tmp_path / "c.jsonl.gz"
    rows = [{"text": "a b", "label": "x"}, {"text": "c", "label": 3}, {"text": "  ", "label": "y"}]
    with gzip.open(p, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert resolve_format(p) == "jsonl"
    assert docs(p) == [("a b", "x"), ("c", "3")]
    texts, labels = read_corpus(p)
    assert texts == ["a b", "c"] and labels == ["x", "3"]


def test_gzipped_lines(tmp_path):
    p = tmp_path / "c.txt.gz"
    with gzip.open(p, "wt") as f:
        f.write("one\ntwo\n")
    assert read_corpus(p) == (["one", "two"], None)


@pytest.mark.parametrize("content, fmt, message", [
    (b"", "auto", "no documents"),
    (b"\n\n  \n", "auto", "no documents"),
    (b"ok line\n\xff\xfe bad\n", "auto", "line 2 is not valid UTF-8"),
    (b"text\x00\x01\x02binary\n", "auto", "binary"),
    (b'{"text": "fine"}\n{"text": \n', "jsonl", "line 2 is not valid JSON"),
    (b'{"body": "no text"}\n', "jsonl", 'no "text"'),
    (b'{"text": "a", "label": "x"}\n{"text": "b"}\n', "jsonl", "have no \"label\""),
])
def test_bad_content_gives_one_line_errors(tmp_path, content, fmt, message):
    p = tmp_path / ("c.jsonl" if fmt == "jsonl" else "c.txt")
    p.write_bytes(content)
    with pytest.raises(MinembedError, match=message) as e:
        read_corpus(p, fmt)
    assert "\n" not in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MinembedError, match="not found"):
        read_corpus(tmp_path / "nope.txt")
    with pytest.raises(MinembedError, match="directory"):
        read_corpus(tmp_path)


def test_huge_line_is_refused_without_reading_it_all(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes(b"short\n" + b"x" * 5_000_000 + b"\nafter\n")
    with pytest.raises(MinembedError, match="line 2 is longer than 1,000"):
        read_corpus(p, max_doc_chars=1000)
    # with a higher bound the same file reads fine
    texts, _ = read_corpus(p, max_doc_chars=6_000_000)
    assert [len(t) for t in texts] == [5, 5_000_000, 5]


def test_paragraph_too_long(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text(("word " * 100 + "\n") * 50)
    with pytest.raises(MinembedError, match="paragraph"):
        read_corpus(p, "paragraphs", max_doc_chars=10_000)


def test_unknown_format(tmp_path):
    with pytest.raises(MinembedError, match="unknown corpus format"):
        resolve_format("x.txt", "csv")
