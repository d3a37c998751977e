"""The command group, its one-line errors, and the options the commands share."""
import functools
import sys
import warnings

import click

from ...errors import MinembedError
from ..corpus import MAX_DOC_CHARS


class _Group(click.Group):
    """Turn the package's user-facing errors into click's one-line errors."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MinembedError as e:
            if getattr(e, "quiet", False):  # one of many processes: rank 0 says it
                sys.exit(1)
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except MemoryError:
            raise click.ClickException("out of memory (try a smaller --batch-size)") from None
        except OSError as e:
            raise click.ClickException(
                f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                            "max_content_width": 100})
@click.version_option(package_name="minembed")
def main():
    """minembed: train text embeddings on your own corpus, with text-crop positive
    pairs and an InfoNCE loss, in NumPy with hand-written backward passes.

    \b
    minembed train corpus.txt -o model     train (no corpus: the built-in one)
    minembed embed model texts.txt -o x.npy   embed texts with a trained model
    minembed export model --to model2vec DIR  for sentence-transformers or model2vec
    minembed eval model [labelled.jsonl]   kNN accuracy and retrieval vs TF-IDF
    minembed compare [labelled.jsonl]      the paper's configurations, one table
    minembed search model corpus "query"   nearest documents to a query
    minembed serve model                   the OpenAI embeddings API on 127.0.0.1:8000
    minembed map model [corpus] -o map.html   t-SNE map of the corpus (.png or .html)
    minembed plot-log model -o curve.png   loss and kNN accuracy against steps
    """
    warnings.formatwarning = lambda message, *args, **kwargs: f"Warning: {message}\n"


def corpus_options(f):
    """--format, --encoding, --errors, --max-doc-chars: how a corpus file is read, given to the
    command as one keyword, ``reading``: Corpus(path, **reading) (product/corpus.py)."""
    @functools.wraps(f)
    def command(*args, fmt, encoding, errors, max_doc_chars, **kwargs):
        reading = dict(fmt=fmt, encoding=encoding, errors=errors, max_doc_chars=max_doc_chars)
        return f(*args, reading=reading, **kwargs)
    for option in reversed(_CORPUS_OPTIONS):
        command = option(command)
    return command


_CORPUS_OPTIONS = (
    click.option("--format", "fmt", type=click.Choice(["auto", "lines", "paragraphs", "jsonl"]),
                 default="auto", show_default=True,
                 help="one document per line, blank-line separated paragraphs, or JSON lines with "
                      "a 'text' (and 'label') field; auto = jsonl for .jsonl files, else lines. "
                      ".gz is read transparently; - (or a pipe) is standard input."),
    click.option("--encoding", default="utf-8", show_default=True,
                 help="the corpus file's text encoding (e.g. latin-1, cp1252)"),
    click.option("--errors", type=click.Choice(["strict", "replace"]), default="strict",
                 show_default=True,
                 help="undecodable bytes: stop with an error, or replace them with U+FFFD"),
    click.option("--max-doc-chars", type=click.IntRange(1), default=MAX_DOC_CHARS,
                 show_default=True, help="refuse documents longer than this"))

DEVICE = click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
                      show_default=True, help="where to compute (gpu needs CuPy)")
THREADS = click.option("--threads", type=click.IntRange(min=1), envvar="MINEMBED_THREADS",
                       help="BLAS threads [MINEMBED_THREADS, else bag: 1, transformer: the idle "
                            "cores]")
SEED = click.option("--seed", type=click.IntRange(0, 2 ** 63 - 1), default=0, show_default=True)
