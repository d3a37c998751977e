"""Two trainings pointed at one output directory: the second refuses (the first
holds an flock), whatever its options, and the first's model is intact."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from minembed.errors import MinembedError
from minembed.product.files import load_weights
from minembed.product.modeldir import load
from minembed.product.outdir import OutputDir

# the CLI, its training held before step 7 for as long as the file $HOLD exists
SLOW_CLI = ("import os, time\n"
            "import minembed.core.train as t\n"
            "f, n = t.train_step, []\n"
            "def step(*a):\n"
            "    n.append(1)\n"
            "    while len(n) >= 7 and os.path.exists(os.environ['HOLD']):\n"
            "        time.sleep(0.01)\n"
            "    return f(*a)\n"
            "t.train_step = step\n"
            "from minembed.product.cli import main\n"
            "main(prog_name='minembed')\n")
CONFIG = ["--members", "1", "--vocab-size", "256", "--dim", "16", "--batch-size", "16",
          "--max-steps", "30", "-q"]


def cli(env, *args, slow=False):
    code = SLOW_CLI if slow else "from minembed.product.cli import main; main(prog_name='minembed')"
    return subprocess.Popen([sys.executable, "-c", code, "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("lock")
    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()
    with open(d / "corpus.txt", "w") as f:
        for i in range(300):
            f.write(" ".join(words[(i * 7 + j * 3) % len(words)]
                             for j in range(20 + i % 30)) + ".\n")
    env = dict(os.environ, MINEMBED_CACHE=str(d / "cache"), OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1")
    return d, env


def test_second_training_is_refused_and_the_first_is_intact(setup):
    d, env = setup
    corpus, out, ref = str(d / "corpus.txt"), str(d / "out"), str(d / "ref")
    hold = d / "hold"
    hold.touch()
    first = cli(dict(env, HOLD=str(hold)), corpus, "-o", out, "--checkpoint-every", "5", *CONFIG,
                slow=True)
    t_end = time.time() + 60
    while not os.path.exists(os.path.join(out, "checkpoint", "state.json")):
        assert first.poll() is None, first.stderr.read()
        assert time.time() < t_end
        time.sleep(0.01)
    # every way of pointing a second training at the directory, while the first runs
    for args in ([corpus, "-o", out, *CONFIG], [corpus, "-o", out, "--force", *CONFIG],
                 ["-o", out, "--force", "--model", "transformer"], ["--resume", out]):
        second = cli(env, *args)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 1, err
        assert "is being written by another training run (locked)" in err, (args, err)
        assert first.poll() is None, "the first run must still be running"
    hold.unlink()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    # the first run's model is complete, verified, and what a lone run gives
    load(out)
    with open(os.path.join(out, "log.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, 31))
    lone = cli(env, corpus, "-o", ref, *CONFIG)
    _, err = lone.communicate(timeout=120)
    assert lone.returncode == 0, err
    a, b = (load_weights(os.path.join(out, "model.safetensors")),
            load_weights(os.path.join(ref, "model.safetensors")))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # the lock went with the first process: the directory can be trained into again
    again = cli(env, corpus, "-o", out, "--force", *CONFIG)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err


def test_lock_held_by_another_process(setup, tmp_path):
    """The lock is per process (flock): a holder that merely opened the directory blocks
    OutputDir, with or without force; it is released when the holder dies."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from minembed.product.outdir import OutputDir; "
         "o = OutputDir(sys.argv[1]); o.open(); print('held', flush=True); sys.stdin.read()",
         str(tmp_path / "o")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    for kw in ({}, {"force": True}, {"resume": True}):
        with pytest.raises(MinembedError, match="locked"):
            OutputDir(tmp_path / "o", **kw)
    assert os.listdir(tmp_path / "o") == [".lock"]
    holder.kill()
    holder.wait()
    o = OutputDir(tmp_path / "o")
    o.close()
