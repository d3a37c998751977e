"""Shared fixtures: a private cache directory for the whole test session, and
small corpora written to temporary files."""
import json
import os

import numpy as np
import pytest
from hypothesis import settings

# Property tests (tests/test_hostile.py): a local run explores new examples every time; CI (the
# CI variable, set by .ci/run) draws the same examples every run, so a submission cannot fail by
# chance. An example that once failed is pinned with @example beside its test.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# a cache for tokenizers and tokenised corpora owned by this test session; the
# built-in corpus is cached there too unless MINEMBED_CACHE is already set
# (CI builds it once per run, a developer reuses theirs)
_OWN_CACHE = None
if "MINEMBED_TEST_CACHE" not in os.environ:
    import tempfile
    _OWN_CACHE = os.environ["MINEMBED_TEST_CACHE"] = tempfile.mkdtemp(prefix="minembed-test-cache-")
os.environ.setdefault("MINEMBED_CACHE", os.environ["MINEMBED_TEST_CACHE"])


def pytest_sessionfinish(session, exitstatus):
    """Remove the cache this session made (nothing is left in /tmp after a run)."""
    if _OWN_CACHE is not None:
        import shutil
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)

TOPICS = {
    "astronomy": "star planet orbit telescope galaxy comet nebula moon solar gravity light year",
    "cooking": "flour butter oven recipe bake sugar salt pepper garlic onion simmer boil",
    "music": "guitar melody chord rhythm piano drum song tempo harmony singer concert note",
    "sport": "football goal team match player coach score league season referee tackle pitch",
}


def make_docs(n_per_topic=60, seed=0):
    """Documents of a few sentences about one of four topics; (texts, labels)."""
    rng = np.random.default_rng(seed)
    fillers = "the a of and to in is was for with on that by as it this from".split()
    texts, labels = [], []
    for topic, words in TOPICS.items():
        words = words.split()
        for _ in range(n_per_topic):
            sents = []
            for _ in range(rng.integers(3, 7)):
                n = rng.integers(18, 40)
                toks = [words[i] if rng.random() < 0.35 else fillers[i % len(fillers)]
                        for i in rng.integers(0, len(words) * 10, size=n) % len(words)]
                s = " ".join(rng.permutation(toks + list(rng.choice(fillers, size=n // 2))))
                sents.append(s.capitalize() + ".")
            texts.append(" ".join(sents))
            labels.append(topic)
    return texts, labels


@pytest.fixture(scope="session")
def topic_docs():
    return make_docs()


@pytest.fixture(scope="session")
def topic_jsonl(tmp_path_factory, topic_docs):
    """A labelled .jsonl corpus of 240 documents."""
    path = tmp_path_factory.mktemp("corpus") / "topics.jsonl"
    texts, labels = topic_docs
    with open(path, "w") as f:
        for t, lab in zip(texts, labels):
            f.write(json.dumps({"text": t, "label": lab}) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def topic_txt(tmp_path_factory, topic_docs):
    """The same documents, one per line, no labels."""
    path = tmp_path_factory.mktemp("corpus") / "topics.txt"
    path.write_text("\n".join(topic_docs[0]) + "\n")
    return str(path)


@pytest.fixture(params=["fast twins", "references"])
def both_implementations(request):
    """Run a test with the fast twins (what training runs) and with the plain references
    (minembed.fast.reference_only): gradient checks hold for both."""
    if request.param == "fast twins":
        yield request.param
        return
    from minembed import fast
    with fast.reference_only():
        yield request.param
