"""minembed serve, HTTP and the process: a body's size checked before it is read, slow and
dropped clients, the batcher, the shutdown on SIGINT/SIGTERM (the request in flight finishes,
exit 0), the command's errors. The helpers are tests/test_serve.py's."""
import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from minembed.product.cli import main
from minembed.product.serve import Batcher, Limits
import test_serve
from test_serve import TEXTS, client, raw, request, running, serving

model_dir, model = test_serve.model_dir, test_serve.model  # its fixtures, for this module too

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def url(model):
    yield from serving(model)


def head(length=None, extra=b""):
    cl = b"" if length is None else b"Content-Length: %d\r\n" % length
    return b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n" + cl + extra + b"\r\n"


def test_body_size_is_checked_before_reading(url):
    t = time.monotonic()
    reply = raw(url, head(10 ** 9))  # no body follows: a server that waited for it would hang
    assert reply.startswith(b"HTTP/1.1 413") and b'"body_too_large"' in reply
    assert time.monotonic() - t < 4
    assert raw(url, head(None)).startswith(b"HTTP/1.1 411")
    chunked = head(None, b"Transfer-Encoding: chunked\r\n") + b'5\r\n{"in"\r\n0\r\n\r\n'
    assert raw(url, chunked).startswith(b"HTTP/1.1 411")
    assert raw(url, head(5, b"Content-Length: 6\r\n") + b"{}{}{}").startswith(b"HTTP/1.1 400")


def test_an_oversized_body_sent_whole_gets_413_not_a_reset(url):
    """The openai client sends the whole body before reading: it must see the 413."""
    with pytest.raises(openai.APIStatusError) as e:
        client(url).embeddings.create(model="topics", input=["x" * 100_000] * 4)
    assert e.value.status_code == 413 and e.value.body["code"] == "body_too_large"


def test_a_refused_body_closes_the_connection(url):
    """Refused before its body was read (404, 401, 413): the body is not taken for the next
    request on the connection; the connection closes after the answer."""
    body = json.dumps({"input": "GET /health HTTP/1.1"}).encode()
    reply = raw(url, head(len(body)).replace(b"/v1/embeddings", b"/v1/nowhere") + body)
    assert reply.count(b"HTTP/1.1") == 1 and b"Connection: close" in reply and b" 404 " in reply
    reply = raw(url, head(len(body)) + body + b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200") == 2  # accepted: the connection goes on


def test_expect_100_continue(url):
    body = json.dumps({"input": "a"}).encode()
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head(len(body), b"Expect: 100-continue\r\n"))
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(body)
        assert s.recv(100000).startswith(b"HTTP/1.1 200")


# ---------------------------------------------------------------------------
# slow, dropped and too many clients

def test_slow_clients_are_cut_off_and_do_not_block_others(model):
    with running(model, limits=Limits(timeout=0.5)) as (_, base):
        port = int(base.rsplit(":", 1)[1])
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        drip = socket.create_connection(("127.0.0.1", port), timeout=5)
        drip.sendall(b"P")
        assert request(base, {"input": "meanwhile"})[0] == 200  # another client is answered
        t = time.monotonic()
        with pytest.raises(OSError):  # a byte every 50 ms: cut at 0.5 s after the first
            for c in b"OST /v1/embeddings HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 200:
                drip.sendall(bytes([c]))
                time.sleep(0.05)
                drip.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    if drip.recv(1) == b"":
                        raise ConnectionError("closed by the server")
                drip.setblocking(True)
        assert time.monotonic() - t < 3
        idle.settimeout(5)
        assert idle.recv(1) == b""  # an idle connection is closed after the timeout too
        idle.close(), drip.close()


def test_dropped_clients(url, capfd):
    body = json.dumps({"input": TEXTS}).encode()
    port = int(url.rsplit(":", 1)[1])
    for data in (head(len(body)) + body[:10], head(len(body)) + body, head(len(body))[:20]):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(data)
        s.close()  # gone before the body ends, or before reading the answer
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.sendall(head(len(body)) + body)
    s.close()  # a reset
    time.sleep(0.3)
    assert request(url, {"input": "still here"})[0] == 200
    assert "Traceback" not in capfd.readouterr().err


# ---------------------------------------------------------------------------
# the batcher

class SlowModel:
    """encode_ids() records each call's texts (a token a character here), the first call waiting
    for ``go``."""

    def __init__(self):
        self.entered, self.go = threading.Event(), threading.Event()
        self.calls, self.tokenizer = [], None

    def encode_ids(self, ids, offsets, dim=None):
        texts = ["".join(map(chr, ids[a:b])) for a, b in zip(offsets[:-1], offsets[1:])]
        self.entered.set()
        self.go.wait(5)
        self.calls.append((list(texts), dim))
        if "bad" in texts:
            raise ValueError("bad text")
        return np.array([[len(t), dim or 0] for t in texts], np.float32)


def test_batcher_takes_the_waiting_requests_together_and_isolates_failures():
    m, out = SlowModel(), {}
    b = Batcher(m, most=5)

    def ask(name, texts, dim=None):
        try:
            out[name] = b.encode(texts, [[ord(c) for c in t] for t in texts], dim)
        except ValueError as e:
            out[name] = e

    threads = [threading.Thread(target=ask, args=("a", ["a"]))]
    threads[0].start()
    assert m.entered.wait(5)  # the worker holds "a"; the others queue meanwhile, in this order
    for name, texts, dim in [("b", ["bb", "bbb"], None), ("c", ["bad"], None),
                             ("d", ["dddd"], 8), ("e", ["e"] * 3, None)]:
        threads.append(threading.Thread(target=ask, args=(name, texts, dim)))
        threads[-1].start()
        while b.queue.qsize() < len(threads) - 1:
            time.sleep(0.005)
    m.go.set()
    [t.join() for t in threads]
    b.stop()
    assert m.calls == [(["a"], None),  # then b, c, d, e together (7 texts: over 5 with e) ...
                       (["bb", "bbb", "bad", "e", "e", "e"], None),  # ... a call for each dim,
                       (["bb", "bbb"], None), (["bad"], None), (["e"] * 3, None),  # each alone
                       (["dddd"], 8)]                                # when one fails
    assert isinstance(out["c"], ValueError) and str(out["c"]) == "bad text"
    assert out["b"].tolist() == [[2, 0], [3, 0]] and out["d"].tolist() == [[4, 8]]
    assert out["e"].tolist() == [[1, 0]] * 3 and out["a"].tolist() == [[1, 0]]


# ---------------------------------------------------------------------------
# the command: graceful shutdown, errors

def read_response(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head_, _, body = data.partition(b"\r\n\r\n")
    n = int(re.search(rb"Content-Length: (\d+)", head_).group(1))
    while len(body) < n:
        body += sock.recv(65536)
    return head_.decode(), json.loads(body)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_the_request_in_flight_and_exits_0(model_dir, model, sig):
    p = subprocess.Popen([sys.executable, "-m", "minembed", "serve", model_dir, "--port", "0"],
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stderr.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+)/v1", line).group(1))
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        busy = socket.create_connection(("127.0.0.1", port), timeout=10)
        body = json.dumps({"input": TEXTS}).encode()
        busy.sendall(head(len(body)) + body)
        assert read_response(busy)[0].startswith("HTTP/1.1 200")  # a keep-alive connection
        busy.sendall(head(len(body)) + body[:7])  # a request in flight: its body in two parts
        time.sleep(0.5)
        p.send_signal(sig)
        assert "stopping" in p.stderr.readline()
        time.sleep(0.3)
        busy.sendall(body[7:])
        status, out = read_response(busy)
        assert status.startswith("HTTP/1.1 200") and "Connection: close" in status
        got = np.float32([d["embedding"] for d in out["data"]])
        assert np.array_equal(got, model.encode(TEXTS))
        assert idle.recv(1) == b""  # idle connections are closed
        with pytest.raises(ConnectionRefusedError):  # and no new ones accepted
            socket.create_connection(("127.0.0.1", port), timeout=10)
        assert p.wait(timeout=30) == 0
        rest = p.stderr.read()
        assert rest.strip() == "stopped" and "Traceback" not in rest
    finally:
        p.kill()
        p.wait()


def test_command_errors_are_one_line(tmp_path, model_dir):
    r = CliRunner().invoke(main, ["serve", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and r.output.startswith("Error: model directory not found")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = CliRunner().invoke(main, ["serve", model_dir, "--port", str(taken.getsockname()[1])])
        assert r.exit_code == 1 and "Error: cannot listen on 127.0.0.1 port" in r.output
    r = CliRunner().invoke(main, ["serve", model_dir], env={"MINEMBED_API_KEY": " "})
    assert r.exit_code == 1 and "Error: --api-key (or MINEMBED_API_KEY) is empty" in r.output
    assert "Traceback" not in r.output


def test_command_defaults_are_the_limits():
    params = {p.name: p.default for p in main.commands["serve"].params}
    limits = Limits()
    for name in ("max_inputs", "max_chars", "max_body", "timeout"):
        assert params[name] == getattr(limits, name), name
    assert params["host"] == "127.0.0.1" and params["port"] == 8000
