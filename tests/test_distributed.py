"""Past one process (minembed/product/distributed.py): R MPI ranks train the model one process
trains, with the same global batch and seed (loss curve and weights within float32
tolerance; one rank: bit for bit), for the bag model and the transformer with dropout;
gradient caching gives the full batch's gradient; rank 0 alone writes; an error or a
Ctrl-C on one rank stops all; --resume works on R ranks.

The ranks run under the mpiexec of the ``mpich`` wheel (the ``mpi`` extra, in ``test``)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from minembed.core.pairs import PairSampler
from minembed.product.corpus import Corpus
from minembed.product.gradcache import _Replay, make_step
from minembed.core.layers import RowGrad
from minembed.product.files import load_weights
from minembed.product.model import encoder_module
from minembed.core.layers import densify
from minembed.core.train import train_step
from minembed.product.settings import TrainConfig

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec", path=sysconfig.get_path("scripts")) or shutil.which("mpiexec")
HERE = Path(__file__).resolve().parent

MODELS = {  # tiny: every test launches several processes on 2 shared cores; one BLAS thread each,
    # as the count can change a product's last bits (minembed/product/runtime.py)
    "bag": ["--members", "1", "--dim", "16", "--vocab-size", "300", "--batch-size", "24",
            "--max-steps", "5", "--threads", "1"],
    "bag-members": ["--dim", "16", "--vocab-size", "300", "--batch-size", "24", "--max-steps", "3",
                    "--threads", "1", "--members", "2"],
    "transformer": ["--model", "transformer", "--dim", "16", "--layers", "1", "--heads", "2",
                    "--ffn", "32", "--max-len", "32", "--dropout", "0.1", "--vocab-size", "300",
                    "--batch-size", "24", "--max-steps", "4", "--threads", "1"],
}
# the CLI with every training step slowed down by DELAY s, so that a signal lands mid-run
SLOW_CLI = ("import time, minembed.product.run as r\n"
            "f = r.make_step\n"
            "r.make_step = lambda *a: (lambda s: lambda *b: (time.sleep(DELAY), s(*b))[1])(f(*a))\n"
            "from minembed.product.cli import main\n"
            "main(prog_name='minembed')\n")


@pytest.fixture(scope="module")
def env(tmp_path_factory, topic_txt):
    e = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return tmp_path_factory.mktemp("dist"), e, topic_txt


def mpirun(n, args, env, cli="-m minembed", timeout=300):
    cmd = [MPIEXEC, "-n", str(n), sys.executable, *cli.split(maxsplit=1)] + list(args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def curve_and_weights(path):
    with open(Path(path) / "log.jsonl") as f:
        losses = [json.loads(line)["loss"] for line in f]
    return np.array(losses), load_weights(str(Path(path) / "model.safetensors"))


def compare(a, b):
    """(max relative difference of the loss curves, of the weights: ||a - b|| / ||a||)."""
    (la, wa), (lb, wb) = a, b
    num = sum(float(((wa[k].astype(np.float64) - wb[k]) ** 2).sum()) for k in wa)
    den = sum(float((wa[k].astype(np.float64) ** 2).sum()) for k in wa)
    return float(np.max(np.abs(la - lb) / np.abs(la))), (num / den) ** 0.5


@pytest.mark.parametrize("model", sorted(MODELS))
def test_ranks_train_the_model_one_process_trains(model, env):
    d, e, corpus = env
    args = MODELS[model]
    res = subprocess.run([sys.executable, "-m", "minembed", "train", corpus, "-o",  # no MPI
                          str(d / f"{model}-1"), "-q"] + args, env=e,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    one = curve_and_weights(d / f"{model}-1")
    for n in (1, 2, 4):
        out = d / f"{model}-{n}ranks"
        res = mpirun(n, ["train", corpus, "-o", str(out), "--distributed", "-q"] + args, e)
        assert res.returncode == 0, res.stderr[-3000:]
        # rank 0's files only
        assert sorted(os.listdir(out)) == sorted(os.listdir(d / f"{model}-1"))
        many = curve_and_weights(out)
        assert len(many[0]) == len(one[0])
        dl, dw = compare(one, many)
        print(f"{model}, {n} ranks: loss curve {dl:.1e}, weights {dw:.1e} (max relative "
              "difference)")
        if n == 1:  # the same numbers in the same order
            assert dl == 0 and dw == 0
        assert dl < 1e-5 and dw < 1e-5
        # elementwise: float32 rounding, which Adam scales up where a gradient is ~0
        for k in one[1]:
            assert (float(np.abs(one[1][k] - many[1][k]).max())
                    < 1e-4 * max(1.0, float(np.abs(one[1][k]).max())))


def test_collectives_and_the_gathers_backward_on_two_and_three_ranks(env):
    d, e, _ = env
    for n in (2, 3):
        res = mpirun(n, [], e, cli=str(HERE / "mpi_checks.py"))
        assert res.returncode == 0 and "collectives OK" in res.stdout, \
            res.stdout + res.stderr[-3000:]


def _pieces(model, corpus, micro_cache, **over):
    extra = dict(dim=16, layers=1, heads=2, ffn=32, max_len=32, dropout=0.1) \
        if model == "transformer" else dict(dim=16)
    extra.update(over)
    cfg = TrainConfig(model=model, vocab_size=300, batch_size=24, **extra).resolved()
    src = Corpus(corpus)
    tok = src.tokenizer(300)
    sampler = PairSampler(src.tokenized(tok), cfg)
    enc, ecfg = encoder_module(model), cfg.encoder_config(tok.get_vocab_size())
    return cfg, sampler, enc, ecfg, enc.init_params(ecfg, np.random.default_rng(0))


@pytest.mark.parametrize("model,over",
                         [("bag", {}), ("transformer", {}), ("bag", dict(matryoshka="4,8"))])
def test_micro_batches_give_the_full_batch_gradient(model, over, topic_txt):
    """... the same loss too: with --matryoshka, the mean of InfoNCE over the prefix dims."""
    cfg, sampler, enc, ecfg, params = _pieces(model, topic_txt, None, **over)

    def step(fn):
        rng = np.random.default_rng([0, 2, 7])
        ids, offsets = sampler.sample(sampler.usable[:24], rng)
        return fn(enc, params, ecfg, ids, offsets, cfg, rng)

    def dense(g, k):
        return densify(g, params[k].shape) if isinstance(g, RowGrad) else g

    loss, acc, grads = step(train_step)
    for m in (1, 5, 24):
        loss_m, acc_m, grads_m = step(make_step(micro_batch=m))
        assert loss_m == pytest.approx(loss, rel=1e-6) and acc_m == acc
        assert grads_m.keys() == grads.keys()
        for k in grads:
            scale = np.abs(dense(grads[k], k)).max()
            assert np.abs(dense(grads[k], k) - dense(grads_m[k], k)).max() <= 3e-5 * scale, (m, k)
        if isinstance(grads["tok_emb"], RowGrad):
            assert np.array_equal(grads["tok_emb"].rows, grads_m["tok_emb"].rows)


def test_replay_reads_the_steps_random_stream_anywhere():
    """_Replay._at(k, n) = the float32 draws k..k+n-1 a Generator would make, also when it
    holds half of a 64-bit output (has_uint32) from an earlier draw."""
    for warm in (lambda g: g.random(3), lambda g: g.integers(0, 2 ** 31, dtype=np.int32)):
        rng = np.random.default_rng([1, 2, 3])
        warm(rng)
        rep = _Replay.__new__(_Replay)
        rep.state, rep.bg = rng.bit_generator.state, np.random.PCG64()
        rep.gen = np.random.Generator(rep.bg)
        full = rng.random(500, dtype=np.float32)
        for k, n in [(0, 5), (1, 1), (2, 7), (3, 64), (99, 100), (437, 63)]:
            assert np.array_equal(rep._at(k, n), full[k:k + n]), (k, n)


def test_only_rank_0_writes_and_an_error_stops_every_rank(env):
    d, e, corpus = env
    taken = d / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    res = mpirun(2, ["train", corpus, "-o", str(taken)] + MODELS["bag"], e, timeout=120)
    assert res.returncode == 1
    assert res.stderr.count("Error:") == 1 and "is not empty" in res.stderr
    assert "Traceback" not in res.stderr and os.listdir(taken) == ["notes.txt"]
    # a run says that several processes train, once (it said nothing of it)
    res = mpirun(2, ["train", corpus, "-o", str(d / "said")] + MODELS["bag"], e, timeout=120)
    assert res.returncode == 0 and res.stderr.count("2 processes train together (MPI)") == 1
    # one rank fails alone (here: rank 1 raises inside a step): every rank ends, none hangs
    code = ("import sys, minembed.product.gradcache as dd\n"
            "f = dd.make_step\n"
            "def g(comm=None, micro_batch=0):\n"
            "    s = f(comm, micro_batch)\n"
            "    def step(*a):\n"
            "        if comm.rank == 1: raise RuntimeError('disk on fire')\n"
            "        return s(*a)\n"
            "    return step\n"
            "import minembed.product.run as r; r.make_step = g\n"
            "from minembed.product.cli import main; main(prog_name='minembed')\n")
    res = mpirun(2, ["-c", code, "train", corpus, "-o", str(d / "fails")] + MODELS["bag"], e,
                 cli="", timeout=120)
    assert res.returncode != 0 and "Error: process 1: RuntimeError: disk on fire" in res.stderr
    assert "Traceback" not in res.stderr


def test_ctrl_c_on_one_rank_stops_all_and_resume_on_other_ranks(env):
    d, e, corpus = env
    out, args = d / "interrupted", MODELS["bag"][:-3] + ["30", "--threads", "1",
                                                         "--checkpoint-every", "0", "--seed", "4"]
    ref = d / "uninterrupted"
    res = mpirun(2, ["train", corpus, "-o", str(ref), "-q"] + args, e)
    assert res.returncode == 0, res.stderr[-3000:]
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-c", SLOW_CLI.replace("DELAY", "0.15"), "train",
           corpus, "-o", str(out), "-q"] + args
    proc = subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    t0 = time.time()
    while not (log.exists() and len(log.read_text().splitlines()) >= 5) and time.time() - t0 < 120:
        time.sleep(0.05)
    os.kill(_rank_pid(1, out), signal.SIGINT)  # Ctrl-C on rank 1 only
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert err.count("resume with: minembed train --resume") == 1
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert 5 <= state["step"] < 30
    res = mpirun(3, ["train", "--resume", str(out), "-q"], e)  # on 3 ranks now
    assert res.returncode == 0, res.stderr[-3000:]
    dl, dw = compare(curve_and_weights(ref), curve_and_weights(out))
    assert dl < 1e-5 and dw < 1e-5 and not (out / "checkpoint").exists()


def _rank_pid(rank, out):
    """The pid of the rank of the MPI job writing ``out`` (mpiexec sets PMI_RANK)."""
    for p in Path("/proc").iterdir():
        try:
            env = (p / "environ").read_bytes().split(b"\0")
            cmd = (p / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if f"PMI_RANK={rank}".encode() in env and f"{out}\0".encode() in cmd:
            return int(p.name)
    raise AssertionError(f"no process of rank {rank}")
