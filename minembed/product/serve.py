"""``minembed serve MODEL``: the OpenAI embeddings API. ``Service`` is the API, ``Batcher``
encodes the waiting requests together, the standard library's threaded HTTP server carries them
(``_Handler``, ``Server``). Why this stack and the batching: docs/serve.md."""
import base64
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import hmac
import http.server
import io
import ipaddress
import itertools
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback

import numpy as np

from ..errors import MinembedError
from .modeldir import load
from .runtime import tuned

FIELDS = ("dimensions", "encoding_format", "input", "model", "user")
KINDS = {str: "a string", bool: "a boolean", dict: "an object", list: "an array",
         type(None): "null", int: "a number", float: "a number"}  # what json.loads gives


@dataclasses.dataclass
class Limits:
    max_inputs: int = 2048          # texts in one request (OpenAI's limit too)
    max_chars: int = 1_000_000      # characters of all the texts of one request
    max_body: int = 8 << 20         # bytes of a request body (413 beyond, before reading it)
    timeout: float = 10.0           # seconds for a request to arrive whole; idle keep-alive
    batch_texts: int = 256          # texts of waiting requests encoded together


class ApiError(Exception):
    """A refused request: its HTTP status and the OpenAI error object (a one-line message)."""

    def __init__(self, status, message, param=None, code=None, kind="invalid_request_error",
                 headers=()):
        super().__init__(message[:500])
        self.status, self.param, self.code, self.kind, self.headers = \
            status, param, code, kind, list(headers)

    def response(self):
        return _json(self.status, {"error": {"message": str(self), "type": self.kind,
                                             "param": self.param, "code": self.code}}, self.headers)


def _json(status, obj, headers=()):
    return status, json.dumps(obj, separators=(",", ":")).encode("utf-8"), list(headers)


def encode(model, texts, tokens, dim):
    """The vectors of ``texts``, tokenised once: ``tokens`` are their ids, which the server counted
    for ``usage`` (Model.encode_ids: Model.encode after its tokenizer)."""
    lengths = [len(t) for t in tokens]
    ids = np.fromiter(itertools.chain.from_iterable(tokens), np.int32, sum(lengths))
    return model.encode_ids(ids, np.r_[0, np.cumsum(lengths)], dim=dim)


class Batcher:
    """One thread encodes for every connection: when it is free, it takes the requests waiting
    (while they hold fewer than ``most`` texts) and encodes them in one call per ``dim``; no
    request waits for others. A text's vector does not depend on its batch (bag: bit for bit)."""

    def __init__(self, model, most):
        self.model, self.most, self.queue = model, most, queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="minembed-encode", daemon=True)
        self.thread.start()

    def encode(self, texts, tokens, dim):
        self.queue.put(job := (texts, tokens, dim, concurrent.futures.Future()))
        return job[3].result()

    def _run(self):
        while (job := self.queue.get()) is not None:
            jobs = [job]
            while sum(len(j[0]) for j in jobs) < self.most and not self.queue.empty():
                jobs.append(self.queue.get())
                if jobs[-1] is None:  # stop(): after these
                    self.queue.put(jobs.pop())
                    break
            for dim in dict.fromkeys(j[2] for j in jobs):
                self._encode([j for j in jobs if j[2] == dim], dim)

    def _encode(self, jobs, dim):
        try:
            X = encode(self.model, [t for j in jobs for t in j[0]], [e for j in jobs for e in j[1]],
                       dim)
        except Exception as e:
            for j in jobs:  # each alone: a request that fails fails only itself
                self._encode([j], dim) if len(jobs) > 1 else j[3].set_exception(e)
            return
        for texts, _, _, done in jobs:
            done.set_result(X[:len(texts)])
            X = X[len(texts):]

    def stop(self):
        self.queue.put(None)
        self.thread.join()


class Service:
    """The API without the transport: ``handle(method, path, headers, read_body)`` gives
    (status, body, headers), calling ``read_body()`` (which may raise ApiError) when it needs it."""

    def __init__(self, model, name=None, api_key=None, limits=None):
        self.model, self.limits = model, limits or Limits()
        self.name = name or os.path.basename(os.path.abspath(model.path or "model"))
        self.key = api_key and hashlib.sha256(api_key.encode("utf-8")).digest()
        self.trained, self.created = model.config.get("matryoshka", [model.dim]), \
            int(os.path.getmtime(model.path)) if model.path else 0
        model.encode(["warm up"])  # imports and first calls, before the first request
        self.batcher = Batcher(model, self.limits.batch_texts)

    def handle(self, method, path, headers, read_body):
        route = path.split("?", 1)[0].rstrip("/")
        route = route[3:] if route.startswith("/v1/") else route
        try:
            if route == "/health":
                return self._allow(method, "GET") or _json(200, {"status": "ok"})
            if route == "/embeddings":
                return self._allow(method, "POST", headers) or self.embeddings(read_body())
            if route == "/models":
                m = dict(id=self.name, object="model", created=self.created, owned_by="minembed")
                return self._allow(method, "GET", headers) or _json(200, dict(object="list",
                                                                               data=[m]))
            raise ApiError(404, f"no endpoint {route or '/'} here: POST /v1/embeddings, GET "
                                f"/v1/models and GET /health are", code="not_found")
        except ApiError as e:
            return e.response()
        except (ConnectionError, TimeoutError):  # the client left, or is too slow: no answer
            raise
        except Exception:  # a bug of ours: on the terminal, never to the client
            traceback.print_exc()
            return ApiError(500, "internal error (the server's terminal says more)",
                            kind="server_error").response()

    def _allow(self, method, allowed, headers=None):
        if method != allowed:
            raise ApiError(405, f"{method} is not allowed here, only {allowed}",
                           code="method_not_allowed", headers=[("Allow", allowed)])
        scheme, _, token = (headers or {}).get("Authorization", "").strip().partition(" ")
        digest = hashlib.sha256(token.strip().encode("utf-8", "replace")).digest()
        if headers is not None and self.key is not None and (
                not hmac.compare_digest(digest, self.key) or scheme.lower() != "bearer"):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: "
                                "Bearer KEY'", code="invalid_api_key",
                           headers=[("WWW-Authenticate", "Bearer")])

    def embeddings(self, body):
        texts, dim, fmt = self.parse(body)
        tok = self.model.tokenizer  # one text: without encode_batch's thread pool
        tokens = [tok.encode(texts[0], add_special_tokens=False).ids] if len(texts) == 1 else \
            [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
        counts = [len(e) for e in tokens]
        if 0 in counts:
            raise ApiError(400, f"input[{counts.index(0)}] has no tokens (only characters the "
                                f"tokenizer drops): its vector would be zero", "input",
                           "invalid_input")
        X = self.batcher.encode(texts, tokens, dim)
        rows = X.tolist() if fmt == "float" else \
            [base64.b64encode(x.astype("<f4").tobytes()).decode("ascii") for x in X]
        return _json(200, {"object": "list", "model": self.name,
                           "data": [{"object": "embedding", "index": i, "embedding": r}
                                    for i, r in enumerate(rows)],
                           "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}})

    def parse(self, body):
        """(texts, dim, encoding_format) of a request body, or ApiError."""
        try:
            req = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(req, dict):
            raise ApiError(400, f"the body must be a JSON object, not {KINDS[type(req)]}",
                           code="invalid_type")
        for k in sorted(set(req) - set(FIELDS))[:1]:
            raise ApiError(400, f"unknown parameter {k[:100]!r} (this server takes "
                                f"{', '.join(FIELDS)})", k[:100], "unknown_parameter")
        if req.get("model") is not None and not isinstance(req["model"], str):
            raise ApiError(400, f"'model' must be a string, not {KINDS[type(req['model'])]}",
                           "model", "invalid_type")
        if req.get("model") not in (None, self.name):
            raise ApiError(404, f"the model {req['model']!r} does not exist here: this server "
                                f"serves {self.name!r} (or: minembed serve --model-name NAME)",
                           "model", "model_not_found")
        if not isinstance(req.get("user", ""), str):
            raise ApiError(400, f"'user' must be a string, not {KINDS[type(req['user'])]}",
                           "user", "invalid_type")
        if req.get("encoding_format") not in (None, "float", "base64"):
            raise ApiError(400, f"encoding_format must be 'float' or 'base64', not "
                                f"{req['encoding_format']!r}", "encoding_format", "invalid_value")
        return (self._texts(req.get("input")), self._dim(req.get("dimensions")),
                req.get("encoding_format") or "float")

    def _texts(self, texts):
        texts, lim = [texts] if isinstance(texts, str) else texts, self.limits
        if not isinstance(texts, list) or not texts:
            why = "an empty array" if texts == [] else KINDS[type(texts)]
            raise ApiError(400, f"'input' must be a text or an array of texts, not {why}",
                           "input", "invalid_input")
        if all(type(t) is int for t in texts) or any(isinstance(t, list) and t and all(
                type(i) is int for i in t) for t in texts):
            raise ApiError(400, "'input' holds token ids: this server takes text (LangChain: "
                                "OpenAIEmbeddings(..., check_embedding_ctx_length=False))",
                           "input", "invalid_input")
        if len(texts) > lim.max_inputs:
            raise ApiError(400, f"'input' has {len(texts):,} texts, more than this server's limit "
                                f"of {lim.max_inputs:,}", "input", "too_many_inputs")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t:
                raise ApiError(400, f"input[{i}] is {'empty' if t == '' else KINDS[type(t)]}, "
                                    f"not a text", "input", "invalid_input")
        if (chars := sum(map(len, texts))) > lim.max_chars:
            raise ApiError(400, f"the texts have {chars:,} characters, more than this server's "
                                f"limit of {lim.max_chars:,}", "input", "too_many_characters")
        return texts

    def _dim(self, dim):
        if dim is None or dim == self.model.dim and type(dim) is int:
            return None
        if type(dim) is not int or not 0 < dim <= self.model.dim:
            raise ApiError(400, f"dimensions must be an integer from 1 to {self.model.dim}, not "
                                f"{dim!r}", "dimensions", "invalid_value")
        if dim not in self.trained:
            raise ApiError(400, f"this model gives {', '.join(map(str, self.trained))} dimensions, "
                                f"not {dim} (others: train with --matryoshka)", "dimensions",
                           "invalid_value")
        return dim


class _Reader(socket.SocketIO):
    """A connection's input: ``timeout`` seconds idle for a request, which must then arrive
    whole within ``timeout`` of its first byte (then the connection is busy till answered)."""

    def __init__(self, handler):
        super().__init__(handler.connection, "rb")
        self.handler = handler

    def readinto(self, buf):
        h = self.handler
        left = h.limits.timeout if h.deadline is None else h.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(left)
        n = super().readinto(buf)
        if n and h.deadline is None:
            h.deadline = time.monotonic() + h.limits.timeout
            h.server.track(self._sock, True)
        return n


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version, server_version, disable_nagle_algorithm = "HTTP/1.1", "minembed", True

    def setup(self):
        super().setup()
        self.limits, self.rfile = self.server.service.limits, io.BufferedReader(_Reader(self))

    def handle_one_request(self):
        self.deadline = None
        self.server.track(self.connection, False)
        try:
            super().handle_one_request()
        except OSError:  # the client left, or was too slow
            self.close_connection = True

    def do_request(self):  # a body is unread until read_body reads it: refused, it closes
        self.unread = self.headers.get("Content-Length", "0").strip() != "0" or \
            "Transfer-Encoding" in self.headers
        status, body, headers = self.server.service.handle(self.command, self.path, self.headers,
                                                           self.read_body)
        self.close_connection |= bool(self.unread)
        self.respond(status, body, headers)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_request

    def respond(self, status, body, headers=()):
        self.close_connection |= self.server.closing
        self.send_response(status)
        for k, v in [*headers, ("Content-Type", "application/json"),
                     ("Content-Length", str(len(body)))] + [("Connection", "close")] * \
                self.close_connection:
            self.send_header(k, v)
        self.end_headers()
        self.connection.settimeout(self.limits.timeout)
        self.wfile.write(body)

    def read_body(self):
        """The body; ApiError for no Content-Length (411) or one above --max-body (413, before
        a byte is read); ConnectionError if the client left before sending it whole."""
        n = ",".join(self.headers.get_all("Content-Length") or []).strip()  # two: refused
        if self.headers.get("Transfer-Encoding") or not n.isdigit():
            self.close_connection = True  # where the body ends is unknown
            raise ApiError(411 if not n else 400, "the request needs a Content-Length header with "
                           "the body's size in bytes (and no Transfer-Encoding)",
                           code="length_required")
        if int(n) > self.limits.max_body:
            raise ApiError(413, f"the body has {int(n):,} bytes, more than this server's limit "
                                f"of {self.limits.max_body:,} (--max-body)", code="body_too_large")
        body, self.unread = self.rfile.read(int(n)), False
        if len(body) < int(n):
            raise ConnectionError("the client left before sending its whole body")
        return body

    def send_error(self, code, message=None, explain=None):  # from the standard library's parser
        self.close_connection = True
        self.respond(*ApiError(code, message or "bad request").response())

    def log_message(self, fmt, *args):  # no access log: a line a request would cost throughput
        pass


class Server(http.server.ThreadingHTTPServer):
    """A thread per connection. Once serve_forever() returns, ``drain()``: idle connections
    close, busy ones finish their request."""
    daemon_threads, block_on_close, request_queue_size = True, False, 128

    def __init__(self, service, host="127.0.0.1", port=8000):
        self.service, self.closing = service, False
        self.conns, self.cond = {}, threading.Condition()  # socket: busy
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)

    def shutdown_request(self, request):
        with self.cond:
            self.conns.pop(request, None)
            self.cond.notify_all()
        super().shutdown_request(request)

    def handle_error(self, request, client_address):  # only errors of ours get here
        if not isinstance(sys.exc_info()[1], OSError):
            traceback.print_exc()

    def track(self, sock, busy):  # busy: reading or answering a request, else waiting for one
        with self.cond, contextlib.suppress(OSError):
            self.conns[sock] = busy
            if self.closing and not busy:
                sock.shutdown(socket.SHUT_RDWR)

    def drain(self, wait):
        """Stop accepting, close the idle connections, wait for the busy ones to finish."""
        self.server_close()
        with self.cond:
            self.closing = True
            for sock, busy in list(self.conns.items()):
                self.track(sock, busy)
            return self.cond.wait_for(lambda: not self.conns, timeout=wait)


def serve(model_dir, host="127.0.0.1", port=8000, api_key=None, model_name=None, limits=None,
          threads=None):
    """Serve MODEL_DIR until SIGINT or SIGTERM, then finish the requests in flight and return."""
    service = Service(load(model_dir), model_name, api_key, limits)
    try:
        server = Server(service, host, port)
    except OSError as e:
        service.batcher.stop()
        raise MinembedError(f"cannot listen on {host} port {port}: {e.strerror or e}") from None

    def stop(signum, frame):  # once: a second Ctrl-C stops at once, a second SIGTERM kills
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        say("stopping: finishing the requests in flight (Ctrl-C again: stop now)")
        threading.Thread(target=server.shutdown, daemon=True).start()

    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)
    ip, port, model = *server.server_address[:2], service.model
    say(f"serving {model_dir} ({model.config['model']}, {model.dim} dimensions) as model "
        f"{service.name!r} at http://{f'[{ip}]' if ':' in ip else ip}:{port}/v1 (Ctrl-C: stop)")
    if not api_key and not ipaddress.ip_address(ip.split("%")[0]).is_loopback:
        say(f"Warning: without --api-key, anyone who can reach {ip} port {port} can use this")
    try:
        with tuned(model.config["model"], threads):
            server.serve_forever(poll_interval=0.1)
            done = server.drain(wait=2 * service.limits.timeout + 60)
    finally:
        server.server_close()
        service.batcher.stop()
    say("stopped" if done else "stopped, with requests still running")
