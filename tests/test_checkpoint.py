"""Checkpoints and resume: a run stopped at any moment (SIGKILL, Ctrl-C) and
resumed ends with exactly the model, bit for bit, and the log of a run that
was never stopped."""
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minembed.product import checkpoint as ckpt_mod
from minembed.errors import MinembedError
from minembed.product.files import load_weights
from minembed.product.modeldir import load
from minembed.product.run import train
from minembed.product.settings import TrainConfig

# the CLI, each training step slowed down by DELAY seconds so that a signal can land mid-run
CLI = ("import time\n"
       "import minembed.core.train as t\n"
       "f = t.train_step\n"
       "t.train_step = lambda *a: (time.sleep(DELAY), f(*a))[1]\n"
       "from minembed.product.cli import main\n"
       "main(prog_name='minembed')\n")

BAG = ["--vocab-size", "256", "--dim", "16", "--batch-size", "16", "--max-steps", "40",
       "--seed", "3"]
TRANSFORMER = ["--model", "transformer", "--vocab-size", "256", "--dim", "16", "--layers", "1",
               "--heads", "2", "--ffn", "32", "--max-len", "32", "--dropout", "0.2",
               "--batch-size", "8", "--max-steps", "24", "--seed", "5"]
WORDS = ("the a model corpus text embedding train step loss vector token sentence document crop "
         "pair batch learning rate adam moment gradient network layer attention memory disk file "
         "resume checkpoint signal process").split()


def write_corpus(path, n_docs=400, seed=0):
    r = random.Random(seed)

    def sentence():
        return " ".join(r.choice(WORDS) for _ in range(r.randint(18, 40))).capitalize() + "."
    with open(path, "w") as f:
        for _ in range(n_docs):
            f.write(" ".join(sentence() for _ in range(r.randint(1, 6))) + "\n")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    write_corpus(d / "corpus.txt")
    e = dict(os.environ, MINEMBED_CACHE=str(d / "cache"), OPENBLAS_NUM_THREADS="1",
             OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return d, e


def start(env, args, delay=0.0):
    return subprocess.Popen([sys.executable, "-c", CLI.replace("DELAY", repr(delay)),
                             "train", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(env, args, delay=0.0):
    p = start(env, args, delay)
    out, err = p.communicate(timeout=120)
    return p.returncode, err


def log_records(model_dir):
    """The log without its timing fields."""
    with open(os.path.join(model_dir, "log.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    for r in recs:
        del r["time"], r["pairs_per_s"]
    return recs


def assert_same_model(a, b, why=""):
    pa, pb = (load_weights(os.path.join(a, "model.safetensors")),
              load_weights(os.path.join(b, "model.safetensors")))
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k].dtype == pb[k].dtype and np.array_equal(pa[k], pb[k]), f"{k} differs {why}"
    assert log_records(a) == log_records(b), why
    assert not os.path.exists(os.path.join(b, "checkpoint")), "a finished run keeps no checkpoint"


def checkpoint_step(model_dir):
    try:
        with open(os.path.join(model_dir, "checkpoint", "state.json")) as f:
            return json.load(f)["step"]
    except (OSError, ValueError, KeyError):
        return 0


def kill_after_checkpoint(proc, model_dir, rng, after_step=0):
    """SIGKILL ``proc`` at a random moment after it saved a checkpoint past ``after_step``."""
    t_end = time.time() + 60
    while checkpoint_step(model_dir) <= after_step:
        assert proc.poll() is None, \
            "the run ended before its first checkpoint: " + proc.stderr.read()
        assert time.time() < t_end
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.2))
    assert proc.poll() is None, "the run ended before it could be killed (make steps slower)"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return checkpoint_step(model_dir)


@pytest.mark.parametrize("config", [BAG, TRANSFORMER], ids=["bag", "transformer"])
def test_sigkill_twice_then_resume_gives_the_uninterrupted_model(env, config):
    d, e = env
    corpus = str(d / "corpus.txt")
    ref, out = str(d / f"ref-{config[1]}"), str(d / f"killed-{config[1]}")
    rc, err = run(e, [corpus, "-o", ref, "-q", *config])
    assert rc == 0, err
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    why = f"(random seed {seed})"
    p = start(e, [corpus, "-o", out, "-q", "--checkpoint-every", "3", *config], delay=0.03)
    step = kill_after_checkpoint(p, out, rng)
    p = start(e, ["--resume", out, "-q", "--checkpoint-every", "2"], delay=0.03)
    kill_after_checkpoint(p, out, rng, after_step=step)
    rc, err = run(e, ["--resume", out, "-q"])
    assert rc == 0, err + why
    assert_same_model(ref, out, why)


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(env):
    d, e = env
    corpus = str(d / "corpus.txt")
    ref, out = str(d / "ref-int"), str(d / "int")
    rc, err = run(e, [corpus, "-o", ref, "-q", *BAG])
    assert rc == 0, err
    p = start(e, [corpus, "-o", out, "--checkpoint-every", "0", *BAG], delay=0.05)
    t_end = time.time() + 60
    while not os.path.exists(os.path.join(out, "log.jsonl")) or \
            len(open(os.path.join(out, "log.jsonl")).readlines()) < 5:
        assert p.poll() is None and time.time() < t_end
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    step = checkpoint_step(out)
    assert 5 <= step < 40
    assert f"interrupted at step {step}; resume with: minembed train --resume {out}" in err
    with pytest.raises(MinembedError, match="does not hold a minembed model"):
        load(out)  # no model yet: only the checkpoint
    rc, err = run(e, ["--resume", out])
    assert rc == 0, err
    assert f"resuming {out} at step {step}" in err
    assert_same_model(ref, out)


def sigint_at(monkeypatch, step):
    """Make train_step raise SIGINT in the middle of its ``step``-th call; returns the undo."""
    import minembed.core.train as t
    real, calls = t.train_step, []

    def interrupted_step(*a):
        calls.append(1)
        if len(calls) == step:
            signal.raise_signal(signal.SIGINT)
        return real(*a)
    monkeypatch.setattr(t, "train_step", interrupted_step)
    return lambda: monkeypatch.setattr(t, "train_step", real)


def test_python_api_interrupt_and_resume(env, monkeypatch):
    """In-process: SIGINT arrives in the middle of step 7; the step completes, a
    checkpoint is saved, TrainingInterrupted is raised; resume=True finishes."""
    d, e = env
    monkeypatch.setenv("MINEMBED_CACHE", e["MINEMBED_CACHE"])
    corpus = str(d / "corpus.txt")
    cfg = TrainConfig(vocab_size=256, dim=16, batch_size=16, max_steps=30, seed=1)
    train(corpus, d / "api-ref", cfg, quiet=True)
    undo = sigint_at(monkeypatch, 7)
    before = signal.getsignal(signal.SIGINT)  # Python's default handler, or SIG_IGN under `cmd &`
    with pytest.raises(ckpt_mod.TrainingInterrupted, match="interrupted at step 7; resume with"):
        train(corpus, d / "api", cfg, quiet=True, checkpoint_every=0)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    undo()
    assert checkpoint_step(d / "api") == 7
    model = train(out_dir=d / "api", resume=True, quiet=True)
    assert model.config["training"]["max_steps"] == 30
    assert_same_model(str(d / "api-ref"), str(d / "api"))


def test_members_are_the_runs_of_their_seeds_and_resume_across_members(env, monkeypatch):
    """--members 3: the 16-wide tables of the runs with seeds 1, 2, 3 side by side, bit for bit;
    stopped at the last step of member 1 or inside member 2, resume gives that same model and
    log."""
    d, e = env
    monkeypatch.setenv("MINEMBED_CACHE", e["MINEMBED_CACHE"])
    corpus = str(d / "corpus.txt")
    cfg = TrainConfig(vocab_size=256, dim=48, batch_size=16, max_steps=10, seed=1, members=3)
    ref = train(corpus, d / "members-ref", cfg, quiet=True)
    assert ref.dim == 48 and ref.config["training"]["steps"] == 30
    singles = [train(corpus, d / f"member-{s}",
                     dataclasses.replace(cfg, dim=16, members=1, seed=s), quiet=True)
               for s in (1, 2, 3)]
    table = load_weights(os.path.join(ref.path, "model.safetensors"))["tok_emb"]
    assert np.array_equal(table,
                          np.concatenate([load_weights(os.path.join(m.path, "model.safetensors"))
                                          ["tok_emb"] for m in singles], axis=1))
    assert [r["member"] for r in log_records(ref.path)] == [1] * 10 + [2] * 10 + [3] * 10
    for stop in (10, 14):
        undo = sigint_at(monkeypatch, stop)
        with pytest.raises(ckpt_mod.TrainingInterrupted, match=f"interrupted at step {stop};"):
            train(corpus, d / f"members-{stop}", cfg, quiet=True, checkpoint_every=0)
        undo()
        assert checkpoint_step(d / f"members-{stop}") == stop
        train(out_dir=d / f"members-{stop}", resume=True, quiet=True)
        assert_same_model(ref.path, str(d / f"members-{stop}"))


def test_resume_refusals(env, tmp_path):
    d, e = env
    corpus = str(d / "corpus.txt")
    out = str(tmp_path / "m")
    p = start(e, [corpus, "-o", out, "-q", "--checkpoint-every", "0", *BAG], delay=0.05)
    while len(open(os.path.join(out, "log.jsonl")).readlines() if os.path.exists(
            os.path.join(out, "log.jsonl")) else []) < 3:
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    assert p.returncode == 130 and checkpoint_step(out) >= 3

    # a new training into the directory: refused, pointing at --resume
    rc, err = run(e, [corpus, "-o", out, *BAG])
    assert rc == 1 and "holds an interrupted training run" in err and "--resume" in err
    # settings cannot change on resume
    rc, err = run(e, ["--resume", out, "--lr", "0.1"])
    assert rc == 1 and "--lr cannot be given" in err, err
    # another corpus (or the same file changed)
    other = tmp_path / "other.txt"
    write_corpus(other, seed=1)
    rc, err = run(e, ["--resume", out, str(other)])
    assert rc == 1 and "is not the corpus this run was trained on" in err, err
    # the corpus moved: give its new path
    moved = tmp_path / "moved.txt"
    os.link(corpus, moved)
    # damaged checkpoint files are named
    state = os.path.join(out, "checkpoint", "state.json")
    good = open(state).read()
    info = json.loads(good)
    npz = os.path.join(out, "checkpoint", info["arrays"])
    blob = open(npz, "rb").read()
    with open(npz, "wb") as f:
        f.write(blob[:-10])
    rc, err = run(e, ["--resume", out])
    assert rc == 1 and "truncated" in err and info["arrays"] in err, err
    with open(npz, "wb") as f:
        f.write(blob[:100] + bytes([blob[100] ^ 1]) + blob[101:])
    rc, err = run(e, ["--resume", out])
    assert rc == 1 and "checksum" in err, err
    with open(npz, "wb") as f:
        f.write(blob)
    with open(state, "w") as f:
        f.write(good[:20])
    rc, err = run(e, ["--resume", out])
    assert rc == 1 and "state.json is damaged" in err, err
    with open(state, "w") as f:
        f.write(good)
    rc, err = run(e, ["--resume", out, str(moved), "-q"])
    assert rc == 0, err
    # finished: nothing left to resume
    rc, err = run(e, ["--resume", out])
    assert rc == 1 and "has no checkpoint (its training finished" in err, err
    rc, err = run(e, ["--resume", str(tmp_path / "nowhere")])
    assert rc == 1 and "does not exist" in err, err


def test_truncate_log_drops_later_and_torn_records(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    ckpt_mod.truncate_log(str(p), 3)
    assert [json.loads(x)["step"] for x in p.read_text().splitlines()] == [1, 2, 3]
    p.write_text('{"step": 1}\n{"st')
    ckpt_mod.truncate_log(str(p), 5)
    assert p.read_text() == '{"step": 1}\n'


def test_resume_keeps_the_runs_blas_thread_count(env, monkeypatch):
    """The count can change the transformer's last bits: it is recorded, and a resumed run
    without --threads / MINEMBED_THREADS uses it, not what the machine's load suggests now."""
    import minembed.product.run as run_mod
    d, e = env
    monkeypatch.setenv("MINEMBED_CACHE", e["MINEMBED_CACHE"])
    monkeypatch.delenv("MINEMBED_THREADS", raising=False)
    corpus = str(d / "corpus.txt")
    cfg = TrainConfig(model="transformer", dim=16, layers=1, heads=2, ffn=32, max_len=32,
                      vocab_size=256, batch_size=16, max_steps=12, seed=1, bag_init=False)
    undo = sigint_at(monkeypatch, 4)
    with pytest.raises(ckpt_mod.TrainingInterrupted):
        train(corpus, d / "threads", cfg, quiet=True, checkpoint_every=0, threads=2)
    undo()
    assert ckpt_mod.load_checkpoint(str(d / "threads")).info["blas_threads"] == 2
    chosen = []
    monkeypatch.setattr(run_mod, "choose_threads",
                        lambda model, threads, default: chosen.append(default) or 2)
    model = train(out_dir=d / "threads", resume=True, quiet=True)
    assert chosen == [2] and model.config["training"]["blas_threads"] == 2
