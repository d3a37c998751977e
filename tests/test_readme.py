"""Every command of README.md runs, in order, and writes what its line says.

What runs: every line of every ```sh block and every ```python block of README.md, in the
order they appear, each in its own subprocess, all in one temporary directory that holds the
small input files the lines name (``INPUTS``, made from ``conftest.make_docs``). ``minembed``
and ``mpiexec`` are this venv's entry points (the ``test`` extra brings the ``plot`` and
``mpi`` extras' packages, so the map and ``mpiexec`` lines run too). HOME is a temporary
directory and MINEMBED_CACHE is unset, so the cache is the README's default,
``~/.cache/minembed``: the test checks that the runs filled it and that the README's
``rm -rf`` line empties it.

What does not run, and the one cap (so that the whole test stays near half a minute: 25 s of
CPU time on 2 cores, where the map line's t-SNE and the transformer line take half of it; each
line's seconds are printed, ``pytest -s`` shows them):

- ``pip install ...`` (the install: the test runs in an installed venv) and ``python -m
  pytest`` (the suite would run itself) in the first block's ``&&`` chains; the rest of each
  chain runs (``minembed train`` on the built-in corpus).
- Every ``minembed train`` gets ``--max-steps 5`` appended (five steps a member: the test
  checks what a command writes, not how good the model is; the transformer line still
  trains the bag model its table starts from, a few seconds). ``minembed compare`` (3.5
  minutes) is not in the README's blocks for this reason: docs/compare.md has it.
- A line ending in ``&`` (a server) is started in the background and stopped at the end, so
  that the lines after it (a client) can reach it; the test waits until it answers /health.
  ``minembed serve`` gets a free port instead of 8000 (``--port``), and the Python blocks'
  ``127.0.0.1:8000`` becomes that port: a busy 8000 must not fail the test.

What is checked beside exit status 0, from the command itself: a trained model directory
holds its files and the settings its line gave; an embedded ``.npy`` has one row per input
document, the model's or ``--dim``'s columns, the ``--dtype``'s type, unit rows for float32,
and the ``(N, k)`` a line's comment claims; ``quantize`` writes ``int8_scales.json``; an export
directory loads in model2vec (and sentence-transformers, when installed) and gives
``minembed.load(...).encode``'s vectors; ``eval`` prints the TF-IDF and majority rows and the
crop retrieval; ``search -k K`` prints K documents; ``map`` and ``plot-log`` write their
files; ``--help`` prints the usage; and in a Python block, every array a line assigns has the
shape its comment claims, float arrays unit rows.
"""
import gzip
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

from conftest import make_docs

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sysconfig.get_path("scripts"))
CAP = ["--max-steps", "5"]
SKIPPED = (["pip", "install"], ["python", "-m", "pytest"])  # the install and the suite itself


SEARCHED = ("A sparse matrix factorisation, and the factorisation of a sparse matrix: the first "
            "text, the second text, one text, a text.")  # (the words README's examples look for)


def _inputs():
    """The input files README lines name: name -> bytes."""
    texts, labels = make_docs(n_per_topic=60, seed=0)
    jsonl = "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in zip(texts, labels))
    paragraphs = "\n\n".join(t.replace(". ", ".\n") for t in texts) + "\n"
    return {
        # (a user's corpus has the words the README's search looks for)
        "corpus.txt": ("\n".join(texts + [SEARCHED] * 2) + "\n").encode(),
        "texts.txt": ("\n".join(texts[::40]) + "\n").encode(),  # 6 documents of the four topics
        "notes.txt": paragraphs.encode(),
        "data.jsonl.gz": gzip.compress(jsonl.encode()),
        "old.txt": ("\n".join(t + " café, naïve" for t in texts) + "\n").encode("latin-1"),
        "labelled.jsonl": jsonl.encode(),
    }


INPUTS = _inputs()
INPUT_NAME = re.compile(r"^[\w.-]+\.(txt|jsonl|csv)(\.gz)?$")


def blocks(text):
    """[(language, body, line number)] of the ```sh and ```python blocks, in order."""
    out = []
    for m in re.finditer(r"^```(sh|python)\n(.*?)^```", text, re.M | re.S):
        out.append((m.group(1), m.group(2), text[:m.start()].count("\n") + 2))
    return out


def sh_commands(body, first_line):
    """[(line number, tokens, comment, background)] of a ```sh block; && chains split, the
    install and the test suite left out (module docstring)."""
    out = []
    for i, line in enumerate(body.splitlines()):
        tokens = shlex.split(line, comments=True)
        if not tokens:
            continue
        comment = line.split(" # ", 1)[1].strip() if " # " in line else ""
        background = tokens[-1] == "&"
        tokens = tokens[:-1] if background else tokens
        chain, seg = [], []
        for t in tokens + ["&&"]:
            if t == "&&":
                chain.append(seg)
                seg = []
            else:
                seg.append(t)
        for seg in chain:
            if any(seg[:len(s)] == s for s in SKIPPED):
                continue
            out.append((first_line + i, seg, comment if seg is chain[-1] else "", background))
    return out


def inner(tokens):
    """The command under ``mpiexec -n R`` (or the command itself)."""
    if tokens[0] == "mpiexec":
        return tokens[3:] if tokens[1] == "-n" else tokens[1:]
    return tokens


def option(tokens, name, default=None):
    return tokens[tokens.index(name) + 1] if name in tokens else default


def positional(tokens):
    """The arguments of a minembed command that are not options or option values."""
    out, skip = [], False
    for t in tokens[2:]:
        if skip:
            skip = False
        elif t.startswith("-"):
            skip = t not in ("--help", "-h", "--force", "-q", "--quiet", "--fast")
        else:
            out.append(t)
    return out


def capped(tokens):
    cmd = inner(tokens)
    if cmd[:2] == ["minembed", "train"] and not {"--help", "--resume", "--max-steps"} & set(cmd):
        return tokens + CAP
    return tokens


def resolve(tokens, home):
    exe = {"minembed": str(BIN / "minembed"), "python": sys.executable,
           "mpiexec": (str(BIN / "mpiexec") if (BIN / "mpiexec").exists()
                       else shutil.which("mpiexec"))}
    out = [exe.get(tokens[0], tokens[0])] + tokens[1:]
    return [str(home) + t[1:] if t == "~" or t.startswith("~/") else t for t in out]


def n_documents(path):
    import minembed
    return len(minembed.Corpus(str(path)).read()[0])


def config(model_dir):
    return json.loads((Path(model_dir) / "config.json").read_text())


# what each command wrote ------------------------------------------------------

def check_train(cmd, cwd):
    out = cwd / option(cmd, "-o", option(cmd, "--out", "minembed_model"))
    for name in ("config.json", "tokenizer.json", "model.safetensors", "log.jsonl",
                 "manifest.json"):
        assert (out / name).is_file(), (out, name)
    assert not (out / "checkpoint").exists() and not (out / ".lock").exists()
    cfg = config(out)
    assert cfg["model"] == option(cmd, "--model", "bag")
    if "--dim" in cmd:
        assert cfg["dim"] == int(option(cmd, "--dim"))
    if "--pooling" in cmd:
        assert cfg["training"]["pooling"] == option(cmd, "--pooling")
    if "--matryoshka" in cmd:
        trained = {int(k) for k in str(cfg["training"]["matryoshka"]).split(",")}
        assert {int(k) for k in option(cmd, "--matryoshka").split(",")} <= trained


def check_embed(cmd, cwd, comment):
    model, inp = positional(cmd)[:2]
    arr = np.load(cwd / option(cmd, "-o", option(cmd, "--out")))
    dim = int(option(cmd, "--dim", config(cwd / model)["dim"]))
    dtype = option(cmd, "--dtype", "float32")
    n = n_documents(cwd / inp)
    if dtype == "binary":
        assert arr.shape == (n, math.ceil(dim / 8)) and arr.dtype == np.uint8
    else:
        assert arr.shape == (n, dim) and arr.dtype == np.dtype(dtype), (arr.shape, arr.dtype)
    if dtype == "float32":
        np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1, atol=1e-5)
    claim = re.match(r"\(N, (\d+)\)", comment)
    if claim:
        assert arr.shape[1] == int(claim.group(1)), (comment, arr.shape)


def check_export(cmd, cwd):
    model, out = positional(cmd)[:2]
    to = option(cmd, "--to")
    import minembed
    texts = [line for line in INPUTS["texts.txt"].decode().splitlines() if line]
    want = minembed.load(str(cwd / model)).encode(texts)
    if to == "model2vec":
        for name in ("model.safetensors", "tokenizer.json", "config.json"):
            assert (cwd / out / name).is_file()
        from model2vec import StaticModel
        got = StaticModel.from_pretrained(str(cwd / out)).encode(texts)
    else:
        assert (cwd / out / "modules.json").is_file()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            return
        got = SentenceTransformer(str(cwd / out), device="cpu").encode(texts)
    np.testing.assert_allclose(got, want, atol=1e-5)


def check(cmd, cwd, comment, stdout):
    sub = cmd[1] if cmd[0] == "minembed" and len(cmd) > 1 else None
    if "--help" in cmd or "-h" in cmd:
        assert "Usage:" in stdout
    elif sub == "train":
        check_train(cmd, cwd)
    elif sub == "embed":
        check_embed(cmd, cwd, comment)
    elif sub == "quantize":
        model = positional(cmd)[0]
        assert (cwd / model / "int8_scales.json").is_file()
        assert "int8_scales.json" in (cwd / model / "manifest.json").read_text()
    elif sub == "export":
        check_export(cmd, cwd)
    elif sub == "eval":
        for row in ("tfidf", "majority", "retrieval"):
            assert row in stdout, (row, stdout)
    elif sub == "search":
        hits = [line for line in stdout.splitlines() if re.match(r"\s*\d+\. ", line)]
        assert len(hits) == int(option(cmd, "-k", 10)), stdout
    elif sub in ("map", "plot-log"):
        outs = [cwd / cmd[i + 1] for i, t in enumerate(cmd) if t in ("-o", "--out")]
        for out in outs or [cwd / ("map.png" if sub == "map" else "curve.png")]:
            head = out.read_bytes()[:4096]
            assert head.startswith(b"\x89PNG") if out.suffix == ".png" else b"<html" in head.lower()
            if sub == "map":
                assert out.with_suffix(".npy").is_file() and out.with_suffix(".csv").is_file()


def check_python(code, cwd, env, first_line):
    """Run a ```python block; every `name = ...  # (shape)` line's array has that shape."""
    dump = ("\nimport json as _json, numpy as _np\n"
            "_json.dump({k: [list(v.shape), v.dtype.kind, float(_np.abs(_np.linalg.norm("
            "v.astype('float64'), axis=-1) - 1).max()) if v.dtype.kind == 'f' and v.size else 0.0]"
            " for k, v in dict(globals()).items() if isinstance(v, _np.ndarray)},"
            " open('_readme_arrays.json', 'w'))\n")
    r = subprocess.run([sys.executable, "-c", code + dump], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"README.md:{first_line}: the Python block failed\n{r.stderr}"
    arrays = json.loads((cwd / "_readme_arrays.json").read_text())
    (cwd / "_readme_arrays.json").unlink()
    claims = 0
    for line in code.splitlines():
        m = re.match(r"(\w+) = .*#\s*\(([\d, ]+)\)", line)
        if m:
            shape = [int(x) for x in m.group(2).replace(" ", "").split(",") if x]
            assert arrays[m.group(1)][0] == shape, (line, arrays[m.group(1)])
            claims += 1
    for name, (_, kind, off) in arrays.items():
        assert kind != "f" or off < 1e-5, (name, "not unit length")
    return claims


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_it_answers(port, proc, where):
    """A server of the README's, answering GET /health within a minute."""
    import urllib.request
    t0 = time.time()
    while time.time() - t0 < 60:
        assert proc.poll() is None, f"{where}: the server ended (exit {proc.returncode})"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{where}: no answer on port {port} within a minute")


# the tests -----------------------------------------------------------------------

def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    first = blocks(text)[0]
    assert (first[2] == 4
            and first[1].splitlines()[0].startswith("pip install -e . && minembed train "))
    assert first[1].splitlines()[1].startswith('pip install -e ".[test]" && python -m pytest -q')


def test_links_stay_in_the_repository():
    """Every Markdown link of the README and docs/ is a file of the repository or a public
    https URL (the repository stands alone)."""
    for md in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            if target.startswith("https://"):
                continue
            path = (md.parent / target.split("#")[0]).resolve()
            assert path.exists() and ROOT in path.parents, (md.name, target)


def test_every_readme_command_runs_in_order(tmp_path):
    text = README.read_text()
    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    for name, data in INPUTS.items():
        (cwd / name).write_bytes(data)
    env = {k: v for k, v in os.environ.items() if k not in ("MINEMBED_CACHE",)}
    # its font cache, kept where it is: building one in the new HOME takes seconds
    import matplotlib
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", MPLBACKEND="Agg",
               MPLCONFIGDIR=env.get("MPLCONFIGDIR") or matplotlib.get_cachedir())
    cache = home / ".cache" / "minembed"
    background, ran, python_claims, port = [], [], 0, free_port()
    try:
        for lang, body, first_line in blocks(text):
            if lang == "python":
                body = body.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                python_claims += check_python(body, cwd, env, first_line)
                ran.append("python block")
                continue
            for line_no, tokens, comment, bg in sh_commands(body, first_line):
                where = f"README.md:{line_no}: {shlex.join(tokens)}"
                for t in tokens:
                    if INPUT_NAME.match(t) and tokens[tokens.index(t) - 1] not in ("-o", "--out"):
                        assert t in INPUTS or (cwd / t).exists(), f"{where}: the test makes no {t}"
                if tokens[:2] == ["rm", "-rf"]:
                    target = Path(resolve(tokens, home)[2])
                    assert home in target.resolve().parents, where  # never outside this test's HOME
                    assert target == cache and (cache / "tokenizers").is_dir() \
                        and (cache / "corpora").is_dir(), \
                        f"{where}: the cache is not where the README says"
                argv = resolve(capped(tokens), home)
                if bg:
                    server = inner(tokens)[:2] == ["minembed", "serve"]
                    argv += ["--port", str(port)] if server else []
                    background.append(subprocess.Popen(argv, cwd=cwd, env=env,
                                                       stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.DEVNULL))
                    wait_until_it_answers(port, background[-1], where)
                    ran.append(where)
                    continue
                t0 = time.perf_counter()
                r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                                   timeout=300)
                print(f"{time.perf_counter() - t0:6.1f} s  {where}")
                assert r.returncode == 0, f"{where}\nexit {r.returncode}\n{r.stdout}\n{r.stderr}"
                check(inner(capped(tokens)), cwd, comment, r.stdout)
                if tokens[:2] == ["rm", "-rf"]:
                    assert not target.exists()
                ran.append(where)
    finally:
        for p in background:
            p.terminate()
            p.wait(30)
    assert python_claims >= 2
    assert any(w.endswith("rm -rf '~/.cache/minembed'") for w in ran), ran
    assert sum("minembed train" in w for w in ran) >= 8 and any("mpiexec" in w for w in ran), ran
