"""minembed serve, the API: the OpenAI client gets Model.encode's vectors; every bad request
gets a 4xx in the OpenAI error shape and the server goes on. HTTP itself (bodies, slow and
dropped clients, the shutdown), the batcher and the command: tests/test_serve_http.py."""
import base64
import contextlib
import http.client
import json
import socket
import threading

import numpy as np
import pytest

import minembed
from minembed import train
from minembed.product.serve import Limits, Server, Service

openai = pytest.importorskip("openai")

SMALL = dict(members=1, dim=16, vocab_size=300, batch_size=16, max_steps=5)
TEXTS = ["the star and the planet orbit", "flour, butter and sugar", "a guitar chord",
         "é 中 😀 unseen characters", "football " * 50]
LIMITS = Limits(max_inputs=8, max_chars=2000, max_body=300_000, timeout=5.0)


def trained(tmp_path_factory, corpus, name, **cfg):
    """A tiny bag model in a directory called ``name`` (the name the server answers to)."""
    out = tmp_path_factory.mktemp("serve") / name
    train(corpus, str(out), minembed.TrainConfig(**SMALL, **cfg), quiet=True)
    return str(out)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, topic_txt):
    return trained(tmp_path_factory, topic_txt, "topics")


@pytest.fixture(scope="module")
def model(model_dir):
    return minembed.load(model_dir)


@pytest.fixture(scope="module")
def mmodel(tmp_path_factory, topic_txt):
    return minembed.load(trained(tmp_path_factory, topic_txt, "matryoshka", matryoshka="8"))


@contextlib.contextmanager
def running(model, limits=LIMITS, **kw):
    """A server on a free port of 127.0.0.1, in a thread: (server, base URL)."""
    service = Service(model, limits=limits, **kw)
    server = Server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.02))
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.drain(10)
        service.batcher.stop()
        thread.join()


def serving(model):
    """The base URL of a server with the default test limits, until the generator is closed."""
    with running(model) as (_, base):
        yield base


@pytest.fixture(scope="module")
def url(model):
    yield from serving(model)


def request(base, body=None, path="/v1/embeddings", method="POST", headers=None):
    """(status, JSON body, response) of one request by the standard library's client."""
    host, port = base.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers or {})
    r = conn.getresponse()
    out = r.status, json.loads(r.read()), r
    conn.close()
    return out


def raw(base, data, timeout=5.0):
    """Send bytes on a fresh connection; what comes back until the server closes it."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def error_of(status, body, want_status, param=None, code=None):
    assert status == want_status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["message"] and "\n" not in err["message"] and "Traceback" not in err["message"]
    assert (err["param"], err["code"]) == (param, code), err
    return err["message"]


# ---------------------------------------------------------------------------
# the openai client gets encode's vectors

def client(base, key="none", **kw):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, **kw)


def test_openai_client_float_and_base64_are_encodes_vectors(url, model):
    want, c = model.encode(TEXTS), client(url)
    r = c.embeddings.create(model="topics", input=TEXTS)  # the client asks for base64, decodes
    assert np.array_equal(np.array([d.embedding for d in r.data], np.float32), want)
    assert [d.index for d in r.data] == list(range(len(TEXTS))) and r.model == "topics"
    tokens = sum(len(e) for e in model.tokenizer.encode_batch(TEXTS, add_special_tokens=False))
    assert r.usage.prompt_tokens == r.usage.total_tokens == tokens > len(TEXTS)
    r = c.embeddings.create(model="topics", input=TEXTS, encoding_format="float")
    assert np.array_equal(np.array([d.embedding for d in r.data], np.float32), want)
    r = c.embeddings.create(model="topics", input=TEXTS[:2], encoding_format="base64")
    got = [np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in r.data]  # as sent
    assert np.array_equal(np.stack(got), want[:2])
    r = c.embeddings.create(model="topics", input=TEXTS[3])  # one string: one vector
    assert len(r.data) == 1 and np.array_equal(np.float32(r.data[0].embedding), want[3])


def test_langchain_when_installed(url, model):
    """LangChain's OpenAIEmbeddings (not a dependency: skipped unless installed) sends text
    with check_embedding_ctx_length=False; by default it sends tiktoken's token ids."""
    lc = pytest.importorskip("langchain_openai")
    emb = lc.OpenAIEmbeddings(model="topics", base_url=url + "/v1", api_key="none",
                              check_embedding_ctx_length=False, max_retries=0)
    assert np.array_equal(np.float32(emb.embed_documents(TEXTS)), model.encode(TEXTS))
    assert np.array_equal(np.float32(emb.embed_query(TEXTS[2])), model.encode(TEXTS[2]))


def test_request_without_model_and_float_json_is_exact(url, model):
    status, body, r = request(url, {"input": TEXTS[1]})
    assert status == 200 and r.getheader("Content-Type") == "application/json"
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"
    assert np.array_equal(np.float32(body["data"][0]["embedding"]), model.encode(TEXTS[1]))


def test_dimensions_on_a_matryoshka_model(mmodel):
    assert mmodel.config["matryoshka"] == [8, 16]
    with running(mmodel) as (_, base):
        c = client(base)
        for dim in (8, 16, None):
            kw = {} if dim is None else {"dimensions": dim}
            r = c.embeddings.create(model="matryoshka", input=TEXTS, **kw)
            got = np.array([d.embedding for d in r.data], np.float32)
            assert np.array_equal(got, mmodel.encode(TEXTS, dim=dim))
            assert got.shape[1] == (dim or 16)
        with pytest.raises(openai.BadRequestError, match="8, 16 dimensions, not 4"):
            c.embeddings.create(model="matryoshka", input="a", dimensions=4)


def test_dimensions_on_a_plain_model_is_refused(url, model):
    c = client(url)
    with pytest.raises(openai.BadRequestError, match="train with --matryoshka") as e:
        c.embeddings.create(model="topics", input="a star", dimensions=8)
    assert e.value.body["param"] == "dimensions"
    r = c.embeddings.create(model="topics", input="a star", dimensions=16)  # its own: fine
    assert np.array_equal(np.float32(r.data[0].embedding), model.encode("a star"))


def test_another_model_name_is_404_unless_served_under_it(url, model):
    with pytest.raises(openai.NotFoundError, match="model-name") as e:
        client(url).embeddings.create(model="text-embedding-3-small", input="a")
    assert e.value.body["code"] == "model_not_found"
    with running(model, name="text-embedding-3-small") as (_, base):
        r = client(base).embeddings.create(model="text-embedding-3-small", input=TEXTS[0])
        assert np.array_equal(np.float32(r.data[0].embedding), model.encode(TEXTS[0]))
        assert [m.id for m in client(base).models.list()] == ["text-embedding-3-small"]


def test_models_and_health(url):
    assert [m.id for m in client(url).models.list()] == ["topics"]
    assert client(url).models.list().data[0].owned_by == "minembed"
    assert request(url, path="/health", method="GET")[:2] == (200, {"status": "ok"})
    assert request(url, path="/v1/models", method="GET")[0] == 200


def test_api_key(model):
    with running(model, api_key="s3cret") as (_, base):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                        {"Authorization": "Bearer"}, {"Authorization": "Bearer s3cret2"}):
            status, body, r = request(base, {"input": "a"}, headers=headers)
            error_of(status, body, 401, None, "invalid_api_key")
            assert r.getheader("WWW-Authenticate") == "Bearer"
        assert request(base, path="/v1/models", method="GET")[0] == 401
        assert request(base, path="/health", method="GET")[0] == 200  # for health checks
        for auth in ("Bearer s3cret", "bearer  s3cret "):
            assert request(base, {"input": "a"}, headers={"Authorization": auth})[0] == 200
        assert client(base, key="s3cret").embeddings.create(model="topics", input="a").data
        with pytest.raises(openai.AuthenticationError):
            client(base, key="s3cre").embeddings.create(model="topics", input="a")


def test_concurrent_requests_each_get_their_own_vectors(mmodel):
    """Many clients at once: batched together, each still gets encode's vectors for its
    texts and its dimensions."""
    results, errors = {}, []

    def one(i):
        try:
            texts = [f"{TEXTS[i % 5]} {i}", TEXTS[(i + 1) % 5]][:1 + i % 2]
            dim = [None, 8][i % 2]
            extra = {"dimensions": dim} if dim else {}
            status, body, _ = request(base, {"input": texts, **extra})
            results[i] = (texts, dim, status, body)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    with running(mmodel) as (_, base):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert not errors and len(results) == 24
    for texts, dim, status, body in results.values():
        assert status == 200
        got = np.float32([d["embedding"] for d in body["data"]])
        assert np.array_equal(got, mmodel.encode(texts, dim=dim))


# ---------------------------------------------------------------------------
# bad requests: a 4xx in the OpenAI error shape, and the server goes on

BAD = [  # (body, status, param, code, a fragment of the message)
    (b"{", 400, None, "invalid_json", "not valid JSON"),
    (b"\xff\xfe\x00garbage", 400, None, "invalid_json", "not valid JSON"),
    (b"[" * 100_000, 400, None, "invalid_json", "not valid JSON"),
    (b'{"input": "a", "dimensions": 1' + b"0" * 5000 + b"}", 400, None, "invalid_json",
     "not valid JSON"),  # an integer of 5,000 digits: Python refuses to parse it
    (b'"a text"', 400, None, "invalid_type", "a JSON object, not a string"),
    ({}, 400, "input", "invalid_input", "not null"),
    ({"input": 3}, 400, "input", "invalid_input", "not a number"),
    ({"input": {"text": "a"}}, 400, "input", "invalid_input", "not an object"),
    ({"input": []}, 400, "input", "invalid_input", "empty array"),
    ({"input": ""}, 400, "input", "invalid_input", "input[0] is empty"),
    ({"input": ["a", ""]}, 400, "input", "invalid_input", "input[1] is empty"),
    ({"input": ["a", 3]}, 400, "input", "invalid_input", "input[1] is a number"),
    ({"input": ["a", None]}, 400, "input", "invalid_input", "input[1] is null"),
    ({"input": [True]}, 400, "input", "invalid_input", "input[0] is a boolean"),
    ({"input": [1, 2, 3]}, 400, "input", "invalid_input", "token ids"),
    ({"input": [[1, 2], [3]]}, 400, "input", "invalid_input", "check_embedding_ctx_length"),
    ({"input": "\x00\x01"}, 400, "input", "invalid_input", "input[0] has no tokens"),
    ({"input": ["a"] * 9}, 400, "input", "too_many_inputs", "9 texts"),
    ({"input": ["x" * 1500, "y" * 501]}, 400, "input", "too_many_characters", "2,001 characters"),
    ({"input": "a", "foo": 1}, 400, "foo", "unknown_parameter", "unknown parameter 'foo'"),
    ({"input": "a", "encoding_format": "int8"}, 400, "encoding_format", "invalid_value", "'int8'"),
    ({"input": "a", "dimensions": True}, 400, "dimensions", "invalid_value", "True"),
    ({"input": "a", "dimensions": 8.0}, 400, "dimensions", "invalid_value", "8.0"),
    ({"input": "a", "dimensions": "8"}, 400, "dimensions", "invalid_value", "'8'"),
    ({"input": "a", "dimensions": 0}, 400, "dimensions", "invalid_value", "from 1 to 16"),
    ({"input": "a", "dimensions": 17}, 400, "dimensions", "invalid_value", "from 1 to 16"),
    ({"input": "a", "model": 5}, 400, "model", "invalid_type", "a number"),
    ({"input": "a", "model": "gpt-4"}, 404, "model", "model_not_found", "'gpt-4'"),
    ({"input": "a", "user": 5}, 400, "user", "invalid_type", "'user'"),
]


@pytest.mark.parametrize("body,status,param,code,fragment", BAD)
def test_bad_request(url, body, status, param, code, fragment):
    got, out, _ = request(url, body)
    assert fragment in error_of(got, out, status, param, code)


def test_bad_requests_leave_no_trace_and_the_server_answers(url, capfd):
    for body, *_ in BAD:
        request(url, body)
    assert request(url, {"input": "still here"})[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_routes_and_methods(url):
    status, body, r = request(url, path="/v1/embeddings", method="GET")
    error_of(status, body, 405, None, "method_not_allowed")
    assert r.getheader("Allow") == "POST"
    error_of(*request(url, {"input": "a"}, path="/v1/embed")[:2], 404, None, "not_found")
    error_of(*request(url, path="/", method="GET")[:2], 404, None, "not_found")
    assert request(url, {"input": "a"}, path="/embeddings")[0] == 200  # base_url without /v1
    reply = raw(url, b"BREW /v1/embeddings HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 501") and b'"invalid_request_error"' in reply
