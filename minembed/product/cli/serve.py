"""minembed serve: the OpenAI embeddings API on a model (product/serve.py)."""
import click

from ...errors import MinembedError
from .group import THREADS, main


@main.command()
@click.argument("model_dir", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="the address to listen on (0.0.0.0: every interface; then give an --api-key)")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="the port (0: a free one, printed)")
@click.option("--api-key", envvar="MINEMBED_API_KEY",
              help="require the header 'Authorization: Bearer KEY' [MINEMBED_API_KEY]")
@click.option("--model-name", help="the model name requests must give, if they give one "
                                   "[the directory's name]")
@click.option("--max-inputs", type=click.IntRange(1), default=2048, show_default=True,
              help="texts in one request")
@click.option("--max-chars", type=click.IntRange(1), default=1_000_000, show_default=True,
              help="characters of all the texts of one request")
@click.option("--max-body", type=click.IntRange(1), default=8 << 20, show_default=True,
              help="bytes of a request body (a larger one is refused before it is read)")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="seconds a request may take to arrive whole, and a connection may stay idle")
@THREADS
def serve(model_dir, host, port, api_key, model_name, max_inputs, max_chars, max_body, timeout,
          threads):
    """Serve the model in MODEL_DIR with the OpenAI embeddings API: POST /v1/embeddings
    (input: a text or a list of texts), GET /v1/models, GET /health. Any OpenAI client
    works: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY or "none"). Ctrl-C or
    SIGTERM finish the requests in flight, then exit. See docs/serve.md."""
    from ..serve import Limits, serve as run

    if api_key is not None and not api_key.strip():
        raise MinembedError("--api-key (or MINEMBED_API_KEY) is empty")
    limits = Limits(max_inputs=max_inputs, max_chars=max_chars, max_body=max_body, timeout=timeout)
    run(model_dir, host, port, api_key, model_name, limits, threads)
