"""The load figures of docs/serve.md: ``minembed serve`` under N concurrent clients, against
``Model.encode`` in-process on the same texts.

    python benchmarks/bench_serve.py [--model DIR] [--servers stdlib,stdlib-nobatch,...]
        [--clients 1,8,32] [--batches 1,64] [--seconds 5] [--repeats 3] [--format base64]
        [--memory-requests 100000]

Each server runs in a process of its own: ``stdlib`` is ``minembed serve``; ``stdlib-nobatch``
the same with each connection encoding its own request (no Batcher), ``stdlib-lock`` the same
one request at a time, ``stdlib-twice`` with the texts tokenised again by ``encode`` (not
reusing the tokens counted for ``usage``), ``uvicorn`` the same ``Service`` behind starlette +
uvicorn (httptools, uvloop), encoding in starlette's thread pool. The clients run in another
process, one thread and one keep-alive connection each, and send pre-built requests of 1 or 64
sentences of the built-in corpus (``encoding_format`` base64, the openai client's default, or
``--format float``) back to back for ``--seconds`` (or ``--max-requests``). Each row: the run
of median throughput of ``--repeats`` runs, interleaved across the servers (other jobs' load
changes while it runs); "CPU ms a request" is the server process's CPU time (all threads) over
its requests, which other jobs' load changes far less than the throughput. A request fails
unless it gets a 200; every 200th response of a thread is decoded and checked (a vector per
text, of the model's dimension, unit length). ``Model.encode`` in-process: calls in a row on
the same texts, in this process. Then ``--memory-requests`` single-text requests from 8
clients to a fresh ``stdlib`` server, its resident memory read every 5 s. Without ``--model``,
a bag model is trained on the built-in corpus first (~20 s).
"""
import argparse
import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import minembed  # noqa: E402
from minembed.product.tokenize import split_sentences  # noqa: E402

HERE = os.path.abspath(__file__)


def sentences(n=20_000):
    texts, _ = minembed.builtin()
    return [s for t in texts for s in split_sentences(t)][:n]


# ---------------------------------------------------------------------------
# the servers (each in its own process: python bench_serve.py _server KIND MODEL)

def asgi_app(service):
    """``Service`` behind starlette: what the ASGI alternative to the standard library is."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response
    from starlette.routing import Route

    async def endpoint(request):
        body = await request.body()
        status, payload, headers = await run_in_threadpool(
            service.handle, request.method, request.url.path, request.headers, lambda: body)
        return Response(payload, status, headers=dict(headers), media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])


def run_server(kind, model_dir):
    """``serve()``, or a variant of it (``kind``): stdlib-nobatch (each connection encodes its
    own request, concurrently), stdlib-lock (the same, one at a time), stdlib-twice (usage
    counted by a tokenisation of its own, the texts tokenised again by encode), uvicorn."""
    from minembed.product import serve as mod
    if kind == "stdlib-twice":
        mod.encode = lambda model, texts, tokens, dim: model.encode(texts, dim=dim)
    if kind in ("stdlib-nobatch", "stdlib-lock"):
        lock = threading.Lock() if kind == "stdlib-lock" else contextlib.nullcontext()

        def direct(self, texts, tokens, dim):
            with lock:
                return mod.encode(self.model, texts, tokens, dim)
        mod.Batcher.encode = direct
    if kind.startswith("stdlib"):
        mod.serve(model_dir, port=0)
        return
    import uvicorn
    from minembed.product.runtime import tuned
    model = minembed.load(model_dir)
    sock = socket.create_server(("127.0.0.1", 0), backlog=256)
    print(f"serving at http://127.0.0.1:{sock.getsockname()[1]}/v1", file=sys.stderr, flush=True)
    config = uvicorn.Config(asgi_app(mod.Service(model)), log_level="warning", access_log=False,
                            http="httptools", loop="uvloop")
    with tuned(model.config["model"]):
        uvicorn.Server(config).run(sockets=[sock])


class Server:
    def __init__(self, kind, model_dir):
        self.kind, self.name = kind, os.path.basename(os.path.abspath(model_dir))
        self.proc = subprocess.Popen([sys.executable, HERE, "_server", kind, model_dir],
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)/v1", line)
        if not m:
            raise SystemExit(f"{kind}: the server did not start: {line}{self.proc.stderr.read()}")
        self.port = int(m.group(1))
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # drain its output

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024

    def cpu(self):
        """CPU seconds the server process has used (all its threads)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


# ---------------------------------------------------------------------------
# the clients (python bench_serve.py _clients PORT N BATCH SECONDS MAX_REQUESTS FORMAT)

def requests_for(port, batch, fmt, name, n=300):
    texts = sentences()
    out = []
    for i in range(n):
        chunk = [texts[(i * batch + j) % len(texts)] for j in range(batch)]
        body = json.dumps({"input": chunk[0] if batch == 1 else chunk, "model": name,
                           "encoding_format": fmt}).encode()
        out.append(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: "
                   b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (port, len(body), body))
    return out


def exchange(sock, request):
    """Send one request, read its response: (status, body)."""
    sock.sendall(request)
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    head, _, body = bytes(buf).partition(b"\r\n\r\n")
    n = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    body = bytearray(body)
    while len(body) < n:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        body += chunk
    return int(head[9:12]), bytes(body)


def check(body, batch):
    data = json.loads(body)["data"]
    assert [d["index"] for d in data] == list(range(batch))
    for d in data:
        e = d["embedding"]
        v = np.frombuffer(base64.b64decode(e), "<f4") if isinstance(e, str) else np.array(e)
        assert len(v) > 0 and abs(np.linalg.norm(v) - 1) < 1e-5


def client(port, reqs, offset, batch, stop, out):
    lat, fails = [], []
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as e:
        out.append((lat, [repr(e)]))
        return
    i = offset
    while not stop():
        t = time.perf_counter()
        try:
            status, body = exchange(sock, reqs[i % len(reqs)])
            if status != 200:
                fails.append(f"{status}: {body[:200]!r}")
            elif (i - offset) % 200 == 0:
                check(body, batch)
        except Exception as e:  # counted, and a fresh connection
            fails.append(repr(e))
            sock.close()
            sock = socket.create_connection(("127.0.0.1", port))
        lat.append(time.perf_counter() - t)
        i += 1
    sock.close()
    out.append((lat, fails))


def run_clients(port, n, batch, seconds, max_requests, fmt, name):
    reqs, out, count = requests_for(port, batch, fmt, name), [], iter(range(max_requests))
    end = time.perf_counter() + seconds
    stop = lambda: time.perf_counter() > end or next(count, None) is None  # noqa: E731
    threads = [threading.Thread(target=client, args=(port, reqs, k * 37, batch, stop, out))
               for k in range(n)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    t = time.perf_counter() - t
    lat = sorted(x for lats, _ in out for x in lats)
    fails = [f for _, fs in out for f in fs]
    print(json.dumps(dict(requests=len(lat), failures=len(fails), first_failures=fails[:3],
                          seconds=t, p50=1e3 * lat[len(lat) // 2] if lat else None,
                          p99=1e3 * lat[int(len(lat) * 0.99)] if lat else None)))


def load(server, n, batch, seconds, max_requests=10 ** 9, fmt="base64"):
    r = subprocess.run([sys.executable, HERE, "_clients", str(server.port), str(n), str(batch),
                        str(seconds), str(max_requests), fmt, server.name],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"the clients failed: {r.stderr}")
    return json.loads(r.stdout.splitlines()[-1])


# ---------------------------------------------------------------------------
# the measurements

def in_process(model, batch, seconds):
    """Model.encode on the texts the clients send, one call after another, in this process."""
    texts, lat, cpu = sentences(), [], time.process_time()
    end = time.perf_counter() + seconds
    from minembed.product.runtime import tuned
    with tuned(model.config["model"]):
        for i in range(10 ** 9):
            if time.perf_counter() > end:
                break
            chunk = [texts[(i * batch + j) % len(texts)] for j in range(batch)]
            t = time.perf_counter()
            model.encode(chunk)
            lat.append(time.perf_counter() - t)
    lat.sort()
    return dict(requests=len(lat), seconds=sum(lat), failures=0, p50=1e3 * lat[len(lat) // 2],
                cpu=time.process_time() - cpu,
                p99=1e3 * lat[int(len(lat) * 0.99)])


def median_run(runs):
    """The run of median throughput, with every run's failures."""
    runs = sorted(runs, key=lambda r: r["requests"] / r["seconds"])
    return dict(runs[len(runs) // 2], failures=sum(r["failures"] for r in runs),
                first_failures=[f for r in runs for f in r.get("first_failures", [])][:3])


def row(what, batch, clients, r, rss=""):
    rps = r["requests"] / r["seconds"]
    print(f"| {what} | {batch} | {clients} | {rps:,.0f} | {rps * batch:,.0f} | {r['p50']:.2f} | "
          f"{r['p99']:.2f} | {1e3 * r['cpu'] / r['requests']:.2f} | {r['failures']} | {rss} |",
          flush=True)
    for f in r.get("first_failures", []):
        print(f"  failure: {f}", file=sys.stderr)


def memory(kind, model_dir, requests, seconds):
    """RSS of one server over ``requests`` single-text requests from 8 clients."""
    server, samples, result = Server(kind, model_dir), [], {}
    try:
        load(server, 8, 1, 5, 1000)  # warm up
        samples.append((0, server.rss_mb()))
        th = threading.Thread(target=lambda: result.update(load(server, 8, 1, seconds,
                                                                requests)))
        t = time.perf_counter()
        th.start()
        while th.is_alive():
            th.join(5)
            samples.append((time.perf_counter() - t, server.rss_mb()))
    finally:
        code = server.stop()
    print(f"\nmemory ({kind}, 8 clients, single texts): {result['requests']:,} requests in "
          f"{result['seconds']:.0f} s, {result['failures']} failed; RSS (MB) every 5 s: "
          + ", ".join(f"{mb:.1f}" for _, mb in samples) + f"; server exit status {code}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a model directory [a bag model trained on the built-in "
                                    "corpus]")
    ap.add_argument("--servers", default="stdlib,stdlib-nobatch,stdlib-twice,uvicorn",
                    help="stdlib: minembed serve; the others: see run_server()")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--seconds", type=float, default=5, help="of each run")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each row, interleaved "
                                                           "across the servers: the median")
    ap.add_argument("--max-requests", type=int, default=100_000)
    ap.add_argument("--format", default="base64", choices=["base64", "float"])
    ap.add_argument("--memory-requests", type=int, default=100_000, help="0: no memory run")
    ap.add_argument("--memory-seconds", type=float, default=300)
    args = ap.parse_args()
    if not args.model:
        args.model = os.path.join(tempfile.mkdtemp(prefix="bench_serve_"), "m")
        print("training a bag model on the built-in corpus ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "minembed", "train", "-q", "-o", args.model],
                       check=True)
    model = minembed.load(args.model)
    clients = [int(x) for x in args.clients.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; Python {sys.version.split()[0]}; model "
          f"{model.config['model']} dim {model.dim}; encoding_format {args.format}; "
          f"median of {args.repeats} runs of {args.seconds:g} s\n")
    print("| server | texts a request | clients | requests/s | texts/s | p50 ms | p99 ms | "
          "CPU ms a request | failed | server RSS MB |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    servers = [Server(kind, args.model) for kind in args.servers.split(",")]
    try:
        rss = {s.kind: [s.rss_mb()] for s in servers}
        for s in servers:
            load(s, 4, 1, 2, 500)  # warm up
        for batch in batches:
            row("in-process Model.encode", batch, "1 (calls in a row)",
                median_run([in_process(model, batch, args.seconds) for _ in range(args.repeats)]))
            for n in clients:
                runs = {s.kind: [] for s in servers}
                for _ in range(args.repeats):  # interleaved: the machine's load changes
                    for s in servers:
                        cpu = s.cpu()
                        runs[s.kind].append(load(s, n, batch, args.seconds,
                                                 args.max_requests, args.format))
                        runs[s.kind][-1]["cpu"] = s.cpu() - cpu
                        rss[s.kind].append(s.rss_mb())
                for s in servers:
                    row(s.kind, batch, n, median_run(runs[s.kind]),
                        f"{rss[s.kind][0]:.0f} -> {rss[s.kind][-1]:.0f}")
    finally:
        for s in servers:
            code = s.stop()
            print(f"{s.kind}: exit status {code} after SIGTERM", file=sys.stderr)
    if args.memory_requests:
        memory(args.servers.split(",")[0], args.model, args.memory_requests, args.memory_seconds)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_server"]:
        run_server(*sys.argv[2:4])
    elif sys.argv[1:2] == ["_clients"]:
        a = sys.argv[2:]
        run_clients(int(a[0]), int(a[1]), int(a[2]), float(a[3]), int(a[4]), a[5], a[6])
    else:
        main()
