"""Corpora: a user's file or the built-in one, read one way for training,
evaluation, search and maps.

    corpus = Corpus("notes.txt", fmt="paragraphs")   # or Corpus() for the built-in corpus
    texts, labels = corpus.read()                   # in memory (labels None if unlabelled)
    tok = corpus.tokenizer(8192)                    # trained on the corpus, cached
    data = corpus.tokenized(tok)                    # memory-mapped token ids, cached

File formats:
  lines       one document per line (the default); blank lines are skipped
  paragraphs  documents separated by blank lines; a paragraph's lines are joined by spaces
  jsonl       one JSON object per line with a "text" field and an optional "label"
Any of them may be gzip-compressed (``.gz``). ``auto`` picks jsonl for
``.jsonl``/``.jsonl.gz`` and lines otherwise. Text is UTF-8 unless ``encoding``
says otherwise; ``errors="replace"`` turns undecodable bytes into U+FFFD
instead of stopping.

Bad input raises MinembedError with a one-line message naming the file and line:
a missing or empty file, undecodable bytes, binary content (NUL bytes), a
document longer than ``max_doc_chars`` (read with a bounded ``readline``, so a
line of gigabytes is refused without being loaded), malformed JSON.

The built-in corpus (``builtin()``) is package data: the docstrings of numpy,
scipy and scikit-learn, frozen (minembed/builtin/README.md; rebuilt by
tools/build_docstrings.py).
"""
import atexit
import codecs
import gzip
import hashlib
import itertools
import json
import os
import re
import shutil
import zlib

from ..errors import MinembedError
from .files import unlink_quietly

FORMATS = ("auto", "lines", "paragraphs", "jsonl")
MAX_DOC_CHARS = 1_000_000  # a "document" longer than this is almost surely not one
BUILTIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "builtin",
                       "docstrings.jsonl.gz")
BUILTIN_NAME = "built-in corpus (numpy/scipy/scikit-learn docstrings)"
TOKENIZER_SAMPLE_DOCS = 500_000  # documents a tokenizer is trained on, at most


def cache_dir():
    """minembed's cache directory: $MINEMBED_CACHE, or ~/.cache/minembed."""
    return os.environ.get("MINEMBED_CACHE") or os.path.join(os.path.expanduser("~"),
                                                            ".cache", "minembed")


def cache_subdir(name):
    """A directory in the cache, created, with what dead processes left half-written there
    removed; a one-line error naming $MINEMBED_CACHE if it cannot be."""
    path = os.path.join(cache_dir(), name)
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError
    except OSError:
        raise MinembedError(f"the cache directory {cache_dir()} is not writable (set "
                            f"MINEMBED_CACHE to a writable directory)") from None
    remove_stale(path)
    return path


# names with a pid: a tokenised corpus being written, an atomic write, a spooled standard input
_STALE = re.compile(r"\.tmp-(\d+)$|^\..+\.(\d+)\.[^.]+\.tmp$|^(\d+)-stdin")


def remove_stale(directory):
    """Remove the temporary files and directories (a tokenised corpus being written, an atomic
    write, a spooled standard input) that processes left in ``directory`` and are dead: a
    process killed (SIGKILL) never cleans up after itself."""
    for name in os.listdir(directory):
        m = _STALE.search(name)
        pid = m and int(next(g for g in m.groups() if g))
        if pid and pid != os.getpid() and not _alive(pid):
            path = os.path.join(directory, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else unlink_quietly(path)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, another user's
        pass
    return True


def _is_stream(path):
    """Standard input ("-"), a pipe or a terminal: a file that can be read only once."""
    return os.fspath(path) == "-" or (os.path.exists(path) and not os.path.isfile(path)
                                      and not os.path.isdir(path))


def _spool(path):
    """Copy a stream into a file in the cache (it is read several times), removed when this
    process ends, or by the next run if this one is killed."""
    spool = os.path.join(cache_subdir("stdin"), f"{os.getpid()}-stdin-{next(_SPOOLED)}")
    source = open(0, "rb", closefd=False) if os.fspath(path) == "-" else open(path, "rb")
    try:
        with source, open(spool, "wb") as dst:
            shutil.copyfileobj(source, dst, 1 << 20)
    except OSError as e:
        unlink_quietly(spool)
        raise MinembedError(f"cannot read {path}: {e.strerror or e}") from None
    atexit.register(unlink_quietly, spool)
    return spool


_SPOOLED = itertools.count()


def builtin(return_names=False):
    """The built-in corpus: (texts, labels), or (texts, labels, names)."""
    with gzip.open(BUILTIN, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    out = [d["text"] for d in docs], [d["label"] for d in docs]
    return out + ([d["name"] for d in docs],) if return_names else out


def resolve_format(path, fmt="auto"):
    if fmt not in FORMATS:
        raise MinembedError(f"unknown corpus format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if fmt != "auto":
        return fmt
    name = str(path).lower().removesuffix(".gz")
    return "jsonl" if name.endswith((".jsonl", ".ndjson")) else "lines"


def _open_binary(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MinembedError(f"corpus file not found: {path}")
    if os.path.isdir(path):
        raise MinembedError(f"corpus path is a directory, not a file: {path}")
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


_LONE_CR = re.compile(r"\r(?!\n)")


def _raw_lines(path, max_doc_chars, lone_cr=True, encoding="utf-8", errors="strict"):
    """Yield (line_number, str) for each line, decoded and checked.

    readline(limit) returns at most ``limit`` bytes, so an endless line is
    detected after reading max bytes, not after reading all of it. Lines end
    at \\n, \\r\\n, and with ``lone_cr`` at a lone \\r too (old Mac files, and
    files that mix them; not in JSON Lines, where \\r is whitespace).
    """
    limit = 4 * max_doc_chars + 1  # a UTF-8 character is at most 4 bytes
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise MinembedError(f"unknown text encoding {encoding!r}") from None
    try:
        with _open_binary(path) as f:
            n = 0
            while raw := f.readline(limit):
                n += 1
                if len(raw) == limit and not raw.endswith(b"\n"):
                    raise _too_long(path, n, max_doc_chars)
                if b"\x00" in raw and encoding.lower().replace("-", "") == "utf8":
                    raise MinembedError(f"{path}: line {n} contains NUL bytes: "
                                        f"this looks like a binary file, not text")
                try:
                    line = raw.decode(encoding, errors)
                except UnicodeDecodeError as e:
                    raise MinembedError(
                        f"{path}: line {n} is not valid "
                        f"{'UTF-8' if encoding == 'utf-8' else encoding} (byte {e.start}: "
                        f"{raw[e.start:e.start + 1]!r}); give its encoding with --encoding "
                        f"(e.g. latin-1), or --errors replace to replace bad bytes") from None
                if n == 1:
                    line = line.lstrip("\ufeff")  # a byte-order mark is not text
                if lone_cr and "\r" in line and _LONE_CR.search(line):
                    for part in _LONE_CR.split(line):
                        yield n, part
                else:
                    yield n, line
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise MinembedError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def _clean(text):
    return " ".join(text.split())  # mixed newlines, tabs and whitespace runs: one space


def _too_long(path, n, max_doc_chars):
    return MinembedError(f"{path}: line {n} is longer than {max_doc_chars:,} characters "
                         "(not a document per line? try --format paragraphs, or raise "
                         "--max-doc-chars)")


def iter_documents(path, fmt="auto", max_doc_chars=MAX_DOC_CHARS, encoding="utf-8",
                   errors="strict"):
    """Yield (text, label) for every non-empty document; label is None unless
    the corpus is jsonl with a "label" field."""
    return ((text, label) for _, text, label in
            iter_numbered(path, fmt, max_doc_chars, encoding, errors))


def iter_numbered(path, fmt="auto", max_doc_chars=MAX_DOC_CHARS, encoding="utf-8",
                  errors="strict", keep_empty=False):
    """Yield (line, text, label) for every document, ``line`` the number of its (first) line in
    the file. Empty documents are skipped unless ``keep_empty``: then every line of a "lines"
    file, and every record of a jsonl file, is one document (an empty one: "")."""
    fmt = resolve_format(path, fmt)
    lines = _raw_lines(path, max_doc_chars, fmt != "jsonl", encoding, errors)
    if fmt == "lines":
        for n, line in lines:
            text = _clean(line)
            if len(text) > max_doc_chars:
                raise _too_long(path, n, max_doc_chars)
            if text or keep_empty:
                yield n, text, None
    elif fmt == "paragraphs":
        yield from _paragraphs(path, lines, max_doc_chars)
    else:
        for n, line in lines:
            if line.strip():
                text, label = _json_document(path, n, line, max_doc_chars)
                if text or keep_empty:
                    yield n, text, label


def _paragraphs(path, lines, max_doc_chars):
    """(first line, paragraph, None): runs of non-blank lines, joined by spaces."""
    buf, size, first = [], 0, 0
    for n, line in lines:
        if line.strip():
            size += len(line) + (1 if buf else 0)  # the lines and the spaces that join them
            first = first if buf else n
            buf.append(line)
            if size > max_doc_chars:
                raise MinembedError(f"{path}: the paragraph ending at line {n} is longer than "
                                    f"{max_doc_chars:,} characters (raise --max-doc-chars)")
        elif buf:
            yield first, _clean(" ".join(buf)), None
            buf, size = [], 0
    if buf:
        yield first, _clean(" ".join(buf)), None


def _json_document(path, n, line, max_doc_chars):
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
    return text, None if label is None else str(label)


class Corpus:
    """A corpus file (streamed, re-readable) or, with no path, the built-in corpus.

    ``name`` says what it is; ``identity`` (a dict) fixes its version: path, size,
    modification time and how it is read, so caches and checkpoints can tell
    when the file changed; ``key`` is that as a string."""

    def __init__(self, path=None, fmt="auto", max_doc_chars=MAX_DOC_CHARS, encoding="utf-8",
                 errors="strict"):
        if errors not in ("strict", "replace"):
            raise MinembedError(f"--errors must be strict or replace, got {errors!r}")
        self.path, self.fmt, self.max_doc_chars = path, fmt, max_doc_chars
        self.encoding, self.errors = encoding, errors
        if path is None:
            self.name, st = BUILTIN_NAME, os.stat(BUILTIN)
            self.text_bytes = None
        else:
            self.name = "standard input" if os.fspath(path) == "-" else os.fspath(path)
            resolve_format(path, fmt)  # validates the format name
            if _is_stream(path):   # read once, into a file
                self.path = path = _spool(path)
            _open_binary(path).close()  # "not found", "a directory": before anything else
            st = os.stat(path)
            if st.st_size == 0:
                raise MinembedError(f"{self.name}: no documents found (the file is empty)")
            # for progress displays (a compressed size says little about the text)
            self.text_bytes = None if self.name.lower().endswith(".gz") else st.st_size
        self.identity = {"path": None if path is None else os.path.abspath(path), "format": fmt,
                         "max_doc_chars": max_doc_chars, "size": st.st_size,
                         "mtime_ns": None if path is None else st.st_mtime_ns}
        if (encoding, errors) != ("utf-8", "strict"):
            self.identity.update(encoding=encoding, errors=errors)
        self.key = "builtin-" + hashlib.sha1(open(BUILTIN, "rb").read()).hexdigest()[:12] \
            if path is None else json.dumps(self.identity, sort_keys=True)

    def documents(self):
        """(text, label) pairs, streamed."""
        if self.path is None:
            return zip(*builtin())
        return iter_documents(self.path, self.fmt, self.max_doc_chars, self.encoding, self.errors)

    def texts(self):
        return (t for t, _ in self.documents())

    def numbered(self, keep_empty=False):
        """(line, text, label) for every document, streamed: its (first) line in the file; with
        ``keep_empty`` every line of a "lines" file (every record of a jsonl one) is one."""
        if self.path is None:
            return ((n, t, lab) for n, (t, lab) in enumerate(zip(*builtin()), 1))
        return iter_numbered(self.path, self.fmt, self.max_doc_chars, self.encoding, self.errors,
                             keep_empty)

    def read(self, with_lines=False):
        """All documents in memory: (texts, labels), labels None when the corpus has none;
        ``with_lines``: (texts, labels, lines), each document's (first) line in the file."""
        lines, texts, labels = [], [], []
        for n, text, label in self.numbered():
            lines.append(n)
            texts.append(text)
            labels.append(label)
        if not texts:
            raise MinembedError(f"{self.name}: no documents found (the file is empty or blank)")
        if any(lab is None for lab in labels) and not all(lab is None for lab in labels):
            missing = sum(lab is None for lab in labels)
            raise MinembedError(f'{self.name}: {missing} of {len(labels)} documents have no '
                                f'"label"; label all of them or none')
        labels = None if labels[0] is None else labels
        return (texts, labels, lines) if with_lines else (texts, labels)

    def labelled(self, purpose="evaluation"):
        """(texts, labels); a MinembedError naming ``purpose`` when there are no labels,
        or fewer than two labels."""
        texts, labels = self.read()
        if labels is None:
            raise MinembedError(f"{self.name} has no labels: {purpose} needs a .jsonl corpus with "
                                f'a "label" field on every line')
        if len(set(labels)) < 2:
            raise MinembedError(f"{self.name}: every document has the label {labels[0]!r}; "
                                f"{purpose} needs at least two labels")
        return texts, labels

    # -- cached tokenizer and tokenised form ---------------------------------

    def _cache_path(self, kind, *parts):
        h = hashlib.sha1("\n".join(map(str, (self.key,) + parts)).encode("utf-8")).hexdigest()[:20]
        return os.path.join(cache_subdir(kind), h)

    def tokenizer(self, vocab_size, say=None, tokens="subwords"):
        """A tokenizer (``tokens``: words or subwords) trained on (up to TOKENIZER_SAMPLE_DOCS
        documents of) the corpus, cached: training one is deterministic."""
        from .files import atomic_write_bytes
        from .tokenize import tokenizer_from_str, train_tokenizer, train_word_tokenizer
        path = self._cache_path("tokenizers", vocab_size, *(["words"] if tokens == "words" else
                                                            [])) + ".json"
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    return tokenizer_from_str(f.read())
            except (OSError, MinembedError):
                pass  # a damaged cache entry: train again
        if say:
            say(f"training a tokenizer ({tokens}, vocabulary {vocab_size:,}) on {self.name}")
        texts = (t for _, t in zip(range(TOKENIZER_SAMPLE_DOCS), self.texts()))
        trainer = train_word_tokenizer if tokens == "words" else train_tokenizer
        tok = trainer(texts, vocab_size=vocab_size)
        atomic_write_bytes(path, tok.to_str().encode("utf-8"))
        return tok

    def tokenized(self, tok, say=None, progress=False):
        """The corpus tokenised with ``tok`` (a TokenizedCorpus, memory-mapped), from
        the cache or made now; ``progress`` shows how far it is on stderr."""
        from .progress import TokenizeProgress
        from .tokenize import TokenizedCorpus, fingerprint, tokenize_corpus
        path = self._cache_path("corpora", fingerprint(tok))
        if os.path.isfile(os.path.join(path, "meta.json")):
            return TokenizedCorpus(path)
        if say:
            say(f"tokenising {self.name}")
        bar = TokenizeProgress(self.text_bytes) if progress else None
        try:
            tc = tokenize_corpus(tok, self.texts(), path, progress=bar)
        finally:
            if bar is not None:
                bar.close()
        if tc.n_docs == 0:
            raise MinembedError(f"{self.name}: no documents found (the file is empty or blank)")
        return tc
