"""Subword tokenizers and the tokenised corpus.

A corpus is tokenised once into flat arrays saved as ``.npy`` files that are
memory-mapped when training (llm.c's and nanoGPT's layout):

    ids.npy          (n_tokens,) int32   every document's token ids, one after another
    doc_offsets.npy  (n_docs+1,) int64   document d = ids[doc_offsets[d]:doc_offsets[d+1]]
    sent_offsets.npy (n_sents+1,) int64  sentence s = ids[sent_offsets[s]:sent_offsets[s+1]]
    doc_sents.npy    (n_docs+1,) int64   document d holds sentences doc_sents[d]:doc_sents[d+1]
    sent_chars.npy   (n_sents,) int32    each sentence's length in characters
    meta.json                            counts, the tokenizer's fingerprint

Documents are split into sentences *before* tokenising (a sentence ends at
. ! or ? followed by whitespace), and each sentence is tokenised on its own:
word-level pre-tokenisation splits at whitespace anyway, so the ids are those
of the whole document, and sentence boundaries in token space come for free.

The arrays are written as they are produced, so memory stays bounded whatever
the corpus size; the directory appears under its final name only when complete.
"""
import hashlib
import itertools
import json
import mmap
import os
import re
import shutil

import numpy as np

from ..errors import MinembedError
from .files import NpyWriter, map_npy

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[MASK]"]
# a sentence ends at . ! ? (possibly followed by closing quotes/brackets) and whitespace
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")


def split_sentences(text):
    """The document's sentences, covering all of its text (stripped)."""
    parts = _SENTENCE_END.split(text)
    return [p.strip() for p in parts if p.strip()]


# ---------------------------------------------------------------------------
# tokenizers

def train_tokenizer(texts, vocab_size, min_frequency=2):
    """A lower-cased subword tokenizer trained on an iterable of strings.

    BPE over words marked SentencePiece-style ("▁" starts a word), with BERT's
    normalisation (lower-case, accents stripped) and punctuation split off.
    Why not WordPiece or "##" continuation pieces: with those, the `tokenizers`
    trainer breaks ties in hash-map order, which changes from one process to
    the next, and the same corpus would give different vocabularies (and
    models). This set-up trains the same tokenizer every time.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    _check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True,
                                                handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(),
                                                  pre_tokenizers.Punctuation()])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def train_word_tokenizer(texts, vocab_size, min_frequency=None):
    """A lower-cased word tokenizer trained on an iterable of strings: every word and punctuation
    mark seen ``min_frequency`` times or more is a token (the ``vocab_size`` most frequent), any
    other is [UNK] -- the vocabulary of TF-IDF with min_df 2 (None: 2, or 1 for 50 texts or
    fewer, as minembed eval's TF-IDF). On short texts (titles, one-line summaries) a bag of words
    beats a bag of subword pieces (docs/quality.md). Same normalisation as train_tokenizer; the
    trainer orders words by count, then by the word: deterministic."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    _check_vocab_size(vocab_size)
    texts = iter(texts)
    first = list(itertools.islice(texts, 51))
    if min_frequency is None:
        min_frequency = 2 if len(first) > 50 else 1
    texts = itertools.chain(first, texts)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True,
                                                handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def is_word_level(tok):
    """Whether ``tok`` tokenises into whole words (train_word_tokenizer), not subword pieces."""
    return json.loads(tok.to_str())["model"]["type"] == "WordLevel"


def _check_vocab_size(vocab_size):
    if vocab_size < len(SPECIAL_TOKENS) + 32:
        raise MinembedError(f"--vocab-size must be at least {len(SPECIAL_TOKENS) + 32}, got "
                            f"{vocab_size}")


def load_tokenizer(path):
    """A tokenizer from a ``tokenizer.json`` file, ready to encode raw text."""
    from tokenizers import Tokenizer

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MinembedError(f"tokenizer file not found: {path}")
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises plain Exceptions
        raise MinembedError(f"{path} is not a valid tokenizer.json "
                            f"({str(e).splitlines()[0]})") from None
    tok.no_truncation()
    tok.no_padding()
    return tok


def tokenizer_from_str(text, where="tokenizer.json"):
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:
        raise MinembedError(f"{where} is not a valid tokenizer "
                            f"({str(e).splitlines()[0]})") from None
    tok.no_truncation()
    tok.no_padding()
    return tok


def fingerprint(tok):
    """A short hash of a tokenizer's full definition (vocabulary and settings)."""
    return hashlib.sha1(tok.to_str().encode("utf-8")).hexdigest()[:16]


def mask_token_id(tok):
    for name in ("[MASK]", "<mask>"):
        i = tok.token_to_id(name)
        if i is not None:
            return i
    return None


def encode_texts(tok, texts):
    """Token ids of each text as a ragged batch: (ids (M,) int32, offsets (N+1,) int64)."""
    encs = tok.encode_batch(list(texts), add_special_tokens=False)
    offsets = np.zeros(len(encs) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encs), dtype=np.int64, count=len(encs)), out=offsets[1:])
    # one list at a time: 1.7 us a text, 2-3% of tokenising
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), dtype=np.int32,
                      count=int(offsets[-1]))
    return ids, offsets


# ---------------------------------------------------------------------------
# the tokenised corpus on disk

class TokenizedCorpus:
    """Memory-mapped views of a tokenised corpus directory (see the module docstring).

    Pages of a mapped file that training has read count in the process's
    resident memory until released, and one random read maps a whole
    page-cache folio (measured: ~280 MB mapped to gather 12k tokens of 256
    random documents from a 700 MB id file). So the crop sampler calls
    ``release_pages()`` after each batch: resident memory stays flat in the
    corpus size. The pages stay in the OS page cache: reading them again costs
    a minor fault, not disk I/O.
    """

    FILES = ("ids", "doc_offsets", "sent_offsets", "doc_sents", "sent_chars")

    def __init__(self, path):
        self.path = os.fspath(path)
        self._mmaps = []
        try:
            with open(os.path.join(self.path, "meta.json")) as f:
                self.meta = json.load(f)
            for name in self.FILES:
                arr, mm = map_npy(os.path.join(self.path, name + ".npy"))
                setattr(self, name, arr)
                self._mmaps.append(mm)
        except (OSError, ValueError) as e:
            raise MinembedError(f"tokenised corpus at {self.path} is unreadable ({e}); delete it "
                                "to rebuild") from None

    def release_pages(self):
        """Drop the mapped pages from this process's resident set (MADV_DONTNEED)."""
        for mm in self._mmaps:
            if len(mm):
                mm.madvise(mmap.MADV_DONTNEED)

    @property
    def n_docs(self):
        return len(self.doc_offsets) - 1

    @property
    def n_tokens(self):
        return len(self.ids)


def tokenize_corpus(tok, docs, out_dir, chunk_docs=8192, progress=None):
    """Tokenise an iterable of document strings into ``out_dir`` (see module docstring).

    Streams: memory holds one chunk of documents at a time. Written into a
    temporary directory renamed into place at the end, so an interrupted run
    never leaves a half-written corpus under the final name (nor, unless
    killed, the temporary one). ``progress(n_docs, n_tokens, n_chars)`` is
    called after each chunk (TokenizeProgress shows it).
    """
    out_dir = os.fspath(out_dir)
    tmp = out_dir + ".tmp-%d" % os.getpid()
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        return _tokenize_into(tok, docs, out_dir, tmp, chunk_docs, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _tokenize_into(tok, docs, out_dir, tmp, chunk_docs, progress):
    w = {name: NpyWriter(os.path.join(tmp, name + ".npy"), dt) for name, dt in
         [("ids", np.int32), ("doc_offsets", np.int64), ("sent_offsets", np.int64),
          ("doc_sents", np.int64), ("sent_chars", np.int32)]}
    w["doc_offsets"].append([0])
    w["sent_offsets"].append([0])
    w["doc_sents"].append([0])
    n_tok = n_sent = n_docs = n_chars = 0
    it = iter(docs)
    while True:
        chunk = list(itertools.islice(it, chunk_docs))
        if not chunk:
            break
        sents = [split_sentences(doc) for doc in chunk]
        n_per_doc = np.fromiter((len(s) for s in sents), dtype=np.int64, count=len(sents))
        flat = list(itertools.chain.from_iterable(sents))
        ids, offsets = encode_texts(tok, flat)  # offsets: sentence boundaries in this chunk
        chars = np.fromiter((len(s) for s in flat), dtype=np.int32, count=len(flat))
        sent_ends = np.cumsum(n_per_doc)  # index of each doc's last sentence + 1, in this chunk
        w["ids"].append(ids)
        w["sent_offsets"].append(offsets[1:] + n_tok)
        w["sent_chars"].append(chars)
        w["doc_sents"].append(sent_ends + n_sent)
        w["doc_offsets"].append(offsets[sent_ends] + n_tok)
        n_tok += len(ids)
        n_sent += len(flat)
        n_docs += len(chunk)
        n_chars += sum(map(len, chunk))
        if progress is not None:
            progress(n_docs, n_tok, n_chars)
    for writer in w.values():
        writer.close()
    meta = {"n_docs": n_docs, "n_tokens": n_tok, "n_sents": n_sent,
            "tokenizer": fingerprint(tok), "vocab_size": tok.get_vocab_size()}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return TokenizedCorpus(out_dir)
