"""Build minembed's built-in corpus: docstrings of the scientific Python stack.

    python tools/build_docstrings.py            # rewrites minembed/builtin/docstrings.jsonl.gz
    python tools/build_docstrings.py --check    # builds and compares with the shipped file

The corpus ships frozen with the package (minembed/builtin/, with the versions it
was built from and the licences in minembed/builtin/README.md), so every figure in
the README reproduces whatever numpy/scipy/scikit-learn are installed. This
script regenerates it from the installed packages (the result depends on their
versions: record them in minembed/builtin/README.md).

`minembed train` with no corpus argument needs real text that needs no download.
numpy, scipy and scikit-learn are installed anyway, and their docstrings are
thousands of carefully written paragraphs about one topic each, so they make a
corpus with natural class labels for evaluation.

Documents
    One document = the description of one public object (function, class,
    ufunc, documented instance such as ``scipy.stats.norm``, or a public
    method of a public class, counted once under the class that defines it,
    however many classes inherit it): its summary, extended summary and the
    prose of its ``Notes``/``Warnings`` sections. Parameters, Returns, Examples, See Also,
    References, ... are dropped (they are lists of names and types, not
    prose), and so are doctests, ``.. directive::`` blocks (math, plot,
    versionadded, deprecated, ...; the content of note/warning admonitions is
    kept), literal blocks, tables and links. Inline markup is reduced to its
    text (:func:`~a.b` -> b, ``code`` -> code, [1]_ -> nothing). Sentences that
    occur in many documents (templates such as sklearn's "Read more in the User
    Guide." or the boilerplate of every scipy.stats distribution) are removed.
    A document is one line of text, sentence punctuation intact, because the
    default corpus format is one document per line and training splits
    documents into sentences. Documents under `MIN_CHARS` characters are
    dropped (mostly one-line summaries), and identical texts count once (the
    first by qualified name).

Labels
    The label is the public package that *defines* the object, read from
    ``obj.__module__`` (not from where it is re-exported): the longest prefix of
    the module path made of public components (none starting with ``_``) that
    is a package, e.g. ``sklearn.cluster._kmeans`` -> ``sklearn.cluster``,
    ``scipy.sparse.linalg._isolve`` -> ``scipy.sparse.linalg``,
    ``numpy._core.multiarray`` -> ``numpy``, ``numpy.random.mtrand`` ->
    ``numpy.random``, ``sklearn.pipeline`` (a module) -> ``sklearn``.
    Instances (ufuncs, distributions) have no module of their own (scipy's
    ufuncs would be ``numpy``'s): they are labelled from their shortest public
    path (``scipy.special.gamma`` -> ``scipy.special``). A label three or more
    components deep with fewer than `MIN_DOCS_PER_LABEL` documents is folded
    into its parent (``scipy.sparse.csgraph`` -> ``scipy.sparse``); labels
    still below the minimum are dropped (``numpy.f2py``, ``sklearn.svm``).

Building imports every public module (some seconds); the result is
deterministic for given versions of numpy, scipy and scikit-learn.
"""
import contextlib
import gzip
import importlib
import inspect
import io
import json
import os
import pkgutil
import re
import sys
import warnings
from collections import Counter

FORMAT_VERSION = 2          # bump when the cleaning changes: the cache name carries it
PACKAGES = ("numpy", "scipy", "sklearn")
MIN_CHARS = 100             # shorter documents are a summary line at most
# A label needs this many documents to be a class. At 50 only 17 labels are
# left and scikit-learn keeps 3 (its subpackages have 30-45 documents each).
MIN_DOCS_PER_LABEL = 30
BOILERPLATE_DOCS = 5        # a sentence in this many documents is template text

# Modules whose import is skipped: test suites, build tooling (numpy.distutils
# is deprecated and its compiler classes are not about numerical work) and
# vendored third-party code (sklearn.externals).
SKIP_COMPONENTS = {"tests", "testing", "conftest", "setup", "distutils", "externals"}

# numpydoc sections whose body is prose; every other section is dropped.
KEEP_SECTIONS = {"notes", "warning", "warnings", "extended summary"}
# Bold-line pseudo-headings ("**Array API Standard Support**", added by scipy)
# whose block is generated boilerplate: dropped like a section.
DROP_BOLD_HEADINGS = {"array api standard support"}
# Admonitions whose content is prose; every other directive block is dropped.
KEEP_DIRECTIVES = {"note", "warning", "hint", "important", "tip", "attention", "caution"}


# ---------------------------------------------------------------------------
# Cleaning one docstring
# ---------------------------------------------------------------------------

_UNDERLINE = re.compile(r"^\s*([-=~^\"'`*+#])\1{2,}\s*$")   # "-----", "~~~~" ...
_TABLE_RULE = re.compile(r"^\s*[-=+|: ]*(==|--|\+-|-\+)[-=+|: ]*$")
_DIRECTIVE = re.compile(r"^(\s*)\.\.(?:\s+([\w:-]+)::(.*)|\s.*|)$")
_BOLD_LINE = re.compile(r"^\*\*([^*]+)\*\*:?$")
_BULLET = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)]|\(\d+\)|#\.)\s+")
# A C-level function documents its signature as the first paragraph.
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*.*)?$")

_ROLE = re.compile(r":(?:[\w-]+:)*[\w-]+:`([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")
_LINK = re.compile(r"`([^`<]*?)\s*<[^>`]*>`__?")
_REF = re.compile(r"`([^`]+)`__?")
_DEFAULT_ROLE = re.compile(r"`([^`]+)`")
_FOOTNOTE = re.compile(r"\s*\[[\w#*.-]+\]_")
_SUBST = re.compile(r"\|(\w[\w -]*)\|")
_BOLD = re.compile(r"\*\*([^*\s](?:[^*]*[^*\s])?)\*\*")
_EMPH = re.compile(r"(?<![\w*])\*([^*\s](?:[^*]*[^*\s])?)\*(?![\w*])")
_URL = re.compile(r"<?https?://[^\s>]+>?")
_ESCAPE = re.compile(r"\\([*_`|\\ ])")
# Space left before punctuation by a removed marker ("paper [2]_." -> "paper ."),
# but not before "..." or slices ("with ::-1").
_SPACE_PUNCT = re.compile(r"\s+([,;!?)]|:(?=\s|$)|\.(?!\.))")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _role_text(content):
    """Text shown for a role's content: 'title <target>' -> title, '~a.b.c' -> c."""
    m = re.match(r"^(.*?)\s*<[^>]*>$", content, re.S)
    if m and m.group(1):
        return m.group(1)
    content = content.lstrip("!")
    if content.startswith("~"):
        content = content[1:].rsplit(".", 1)[-1]
    return content


def clean_inline(text):
    """Reduce reStructuredText inline markup in one paragraph to plain text."""
    text = _ROLE.sub(lambda m: _role_text(m.group(1)), text)
    text = _LITERAL.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _REF.sub(lambda m: _role_text(m.group(1)), text)
    text = _DEFAULT_ROLE.sub(lambda m: _role_text(m.group(1)), text)
    text = _FOOTNOTE.sub("", text)
    text = _SUBST.sub(r"\1", text)
    text = _BOLD.sub(r"\1", text)
    text = _EMPH.sub(r"\1", text)
    text = _URL.sub("", text)
    text = _ESCAPE.sub(r"\1", text)
    # Removed links/markers can leave "()" behind: "the paper ([2]_)".
    text = re.sub(r"\s*\(\s*\)", "", text)
    text = " ".join(text.split())
    return _SPACE_PUNCT.sub(r"\1", text)


def _indent(line):
    return len(line) - len(line.lstrip())


def _kept_lines(doc):
    """Lines of the kept sections (preamble, Notes, Warnings) of a cleandoc'd docstring."""
    lines = doc.splitlines()
    keep, out, i = True, [], 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and _UNDERLINE.match(nxt) and nxt.strip()[0] == "-" and _indent(line) == 0:
            # A numpydoc section header.
            keep = line.strip().lower().rstrip(":") in KEEP_SECTIONS
            i += 2
            continue
        bold = _BOLD_LINE.match(line.strip())
        if bold and bold.group(1).strip().lower() in DROP_BOLD_HEADINGS:
            keep = False
        if keep:
            out.append(line)
        i += 1
    return out


def _paragraphs(lines):
    """Drop directives, literal blocks, doctests and headings; yield prose paragraphs."""
    paragraphs, current = [], []
    skip_deeper = None          # skip lines indented deeper than this (a dropped block)
    in_doctest = False
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        stripped = line.strip()
        i += 1
        if skip_deeper is not None:
            if not stripped or _indent(line) > skip_deeper:
                continue
            skip_deeper = None
        if in_doctest:
            if stripped:
                continue
            in_doctest = False
        if not stripped:
            if current:
                paragraphs.append(current)
                current = []
            continue
        if stripped.startswith(">>>"):
            # A doctest runs to the next blank line (its "..." lines and output).
            in_doctest = True
            continue
        m = _DIRECTIVE.match(line)
        if m:
            name = (m.group(2) or "").lower()
            if name in KEEP_DIRECTIVES:
                # Keep the admonition's text; its indented body is read as usual.
                if m.group(3).strip():
                    current.append(m.group(3).strip())
            else:
                # math, plot, versionadded, deprecated, citations, comments ...
                skip_deeper = _indent(line)
                paragraphs.append(current)
                current = []
            continue
        if i < len(lines) and _UNDERLINE.match(lines[i]) and not _TABLE_RULE.match(line):
            # A heading inside a kept section: not a sentence.
            i += 1
            continue
        if _BOLD_LINE.match(stripped) and not current:
            continue            # a bold line on its own is a heading too
        if stripped.endswith("::"):
            # "Text::" introduces an indented literal block (code, formulas).
            text = stripped[:-2].rstrip()
            if text:
                current.append(text + ("" if stripped[-3] == " " else ":"))
            skip_deeper = _indent(line)
            # The block breaks the paragraph: what follows it is a new one.
            paragraphs.append(current)
            current = []
            continue
        current.append(line)
    if current:
        paragraphs.append(current)
    return [p for p in paragraphs if p]


def _is_table(paragraph):
    return any(_TABLE_RULE.match(line) or (line.strip().startswith("|")
                                           and line.strip().endswith("|"))
               for line in paragraph)


def clean_docstring(doc):
    """One object's docstring -> one line of descriptive prose ('' if none)."""
    if not doc or not isinstance(doc, str):
        return ""
    doc = inspect.cleandoc(doc)
    texts, listed = [], []      # paragraphs or list items; is it a list item?
    for n, paragraph in enumerate(_paragraphs(_kept_lines(doc))):
        if _is_table(paragraph):
            continue
        # List items become sentences of their own. A bullet starts an item
        # only at the start of the paragraph, after a line ending in ":" or
        # beside an earlier item: "7 * 5\n* 3 * 1" wraps a formula.
        items, item, bullet_indent = [], [], None
        for k, line in enumerate(paragraph):
            is_item = _BULLET.match(line) and (
                k == 0 or paragraph[k - 1].rstrip().endswith(":") or _indent(line) == bullet_indent)
            if is_item:
                bullet_indent = _indent(line)
                if item:
                    items.append(item)
                item = [_BULLET.sub("", line)]
            else:
                item.append(line)
        items.append(item)
        for item in items:
            in_list = len(items) > 1
            text = " ".join(line.strip() for line in item)
            if n == 0 and _SIGNATURE.match(text):
                continue
            text = clean_inline(text)
            # Mostly symbols: a formula or a code fragment, not prose.
            if not text or sum(c.isalpha() for c in text) < 0.5 * len(text):
                continue
            texts.append(text)
            listed.append(in_list)
    # A paragraph or list item ends a sentence; without this, a list would run
    # into one long "sentence" when training splits documents. But a paragraph
    # cut short by a dropped formula ("... is obtained by substituting" [math]
    # "into H(s) ...") goes on in lower case: no full stop there. A colon whose
    # formula was dropped ("The log loss is:" [math] "Read more ...") ends the
    # sentence too.
    for k in range(len(texts)):
        nxt = texts[k + 1] if k + 1 < len(texts) else "A"
        nxt_listed = k + 1 < len(texts) and listed[k + 1]
        goes_on = nxt[0].islower() and not listed[k] and not nxt_listed
        if (texts[k][-1].isalnum() or texts[k][-1] in ")]\"'") and not goes_on:
            texts[k] += "."
        elif texts[k][-1] == ":" and not goes_on and not nxt_listed:
            texts[k] = texts[k][:-1] + "."
    return " ".join(texts)


def split_sentences(text):
    """Split on sentence-ending punctuation followed by whitespace."""
    return [s for s in _SENTENCE_END.split(text) if s]


# ---------------------------------------------------------------------------
# Finding public objects
# ---------------------------------------------------------------------------

def _skip_module(name):
    parts = name.split(".")
    return any(p.startswith("_") or p in SKIP_COMPONENTS for p in parts)


def _public_modules(package):
    """Import `package` and its public submodules; return {name: module}, sorted.

    Like pkgutil.walk_packages, but it does not descend into private or test
    packages (walk_packages imports every package it passes, to find its path).
    """
    modules = {}
    todo = [package]
    while todo:
        name = todo.pop()
        try:
            module = importlib.import_module(name)
        except BaseException:       # optional dependencies, platform modules, SystemExit ...
            continue
        modules[name] = module
        path = getattr(module, "__path__", None)
        if path is None:
            continue
        for info in pkgutil.iter_modules(path, name + "."):
            if not _skip_module(info.name):
                todo.append(info.name)
    return dict(sorted(modules.items()))


def _public_names(module):
    names = getattr(module, "__all__", None)
    if names is None or not isinstance(names, (list, tuple)):
        names = dir(module)
    return sorted({n for n in names if isinstance(n, str) and not n.startswith("_")})


def _is_documented_object(obj):
    """Functions, classes, ufuncs, C functions and instances with their own doc."""
    if inspect.ismodule(obj):
        return False
    doc = getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return False
    if inspect.isclass(obj) or inspect.isroutine(obj) or callable(obj):
        return True
    # A documented instance such as scipy.stats.norm; constants (np.pi) carry
    # their type's docstring and are skipped.
    return doc != getattr(type(obj), "__doc__", None)


def _defining_module(obj, paths):
    """Module that defines `obj`; `paths` are the public paths it was found at."""
    module = getattr(obj, "__module__", None)
    if isinstance(module, str) and (inspect.isclass(obj) or inspect.isroutine(obj)
                                    or module != getattr(type(obj), "__module__", None)):
        return module
    # An instance (a ufunc, scipy.stats.norm, an array) has no module or only
    # its type's: scipy.special's ufuncs would all be "numpy". It is defined
    # where it is publicly exposed: the module of its shortest public path.
    return _shortest(paths).rsplit(".", 1)[0]


def _shortest(paths):
    return min(paths, key=lambda p: (p.count("."), p))


def _label(module_name):
    """Longest public package prefix of the defining module's name."""
    parts = module_name.split(".")
    label = parts[0]
    for k in range(2, len(parts) + 1):
        if parts[k - 1].startswith("_") or parts[k - 1] in SKIP_COMPONENTS:
            break
        prefix = ".".join(parts[:k])
        module = sys.modules.get(prefix)
        if module is None or not hasattr(module, "__path__"):
            break
        label = prefix
    return label


def _methods(cls):
    """(owner class, name, function) for the public methods reachable on `cls`.

    The owner is the class in the MRO that defines the method, so a method
    inherited by many public classes (sklearn's get_params, a private base
    class's fit) is one object, reached once however many classes inherit it.
    Methods defined outside numpy/scipy/sklearn (object, abc) are skipped.
    """
    out = []
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if (owner is None
                or (getattr(owner, "__module__", None) or "").split(".")[0] not in PACKAGES):
            continue
        attr = vars(owner)[name]
        func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        # Python, C and Cython methods; properties and other descriptors
        # (sklearn's set_*_request, not callable) describe attributes.
        if not (inspect.isroutine(func) and callable(func)):
            continue
        if isinstance(getattr(func, "__doc__", None), str):
            out.append((owner, name, func))
    return out


def _collect_objects():
    """[(qualified name, label, docstring)] for every public object, sorted by name."""
    # Import everything first, so no module's namespace is read before or
    # after another package's import has touched it.
    modules = {}
    for package in PACKAGES:
        modules.update(_public_modules(package))
    found = {}                  # id(obj) -> (obj, public paths)
    for module_name, module in sorted(modules.items()):
        for name in _public_names(module):
            try:
                obj = getattr(module, name)
            except BaseException:
                continue
            if not _is_documented_object(obj):
                continue
            # scipy's ufuncs have no __module__; their type's is numpy.
            origin = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", None)
            if not isinstance(origin, str) or origin.split(".")[0] not in PACKAGES:
                continue    # re-exported from elsewhere (builtins, joblib ...)
            found.setdefault(id(obj), (obj, []))[1].append(module_name + "." + name)

    records = {}
    for obj, paths in found.values():
        defining = _defining_module(obj, paths)
        qualname = getattr(obj, "__qualname__", None)
        if isinstance(qualname, str) and (inspect.isclass(obj) or inspect.isroutine(obj)):
            qname = defining + "." + qualname
        else:                   # instances have no qualified name of their own
            qname = _shortest(paths)
        records.setdefault(qname, (_label(defining), obj.__doc__))
        if inspect.isclass(obj):
            for owner, mname, func in _methods(obj):
                mq = f"{owner.__module__}.{owner.__qualname__}.{mname}"
                records.setdefault(mq, (_label(owner.__module__), func.__doc__))
    return [(q, lab, doc) for q, (lab, doc) in sorted(records.items())]


# ---------------------------------------------------------------------------
# Building the corpus
# ---------------------------------------------------------------------------

def _fold_labels(labels):
    """Fold small labels 3+ components deep into their parent, deepest first."""
    labels = list(labels)
    for depth in range(max(lab.count(".") + 1 for lab in labels), 2, -1):
        counts = Counter(labels)
        labels = [lab.rsplit(".", 1)[0]
                  if lab.count(".") + 1 == depth and counts[lab] < MIN_DOCS_PER_LABEL else lab
                  for lab in labels]
    return labels


def build():
    """Build the corpus from the installed packages: (texts, labels, names)."""
    with warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        objects = _collect_objects()
        cleaned = [(q, lab, clean_docstring(doc)) for q, lab, doc in objects]

    # Template sentences are counted once per document they occur in, with the
    # object's own name masked ("As an instance of the rv_continuous class,
    # <name> object inherits ..." is one template for 100 distributions).
    def key(sentence, qname):
        name = qname.rsplit(".", 1)[-1]
        return sentence.replace(name, "\0") if len(name) >= 3 else sentence

    counts = Counter()
    for qname, _, text in cleaned:
        counts.update({key(s, qname) for s in split_sentences(text)})
    names, labels, texts, seen = [], [], [], set()
    for qname, label, text in cleaned:
        text = " ".join(s for s in split_sentences(text)
                        if counts[key(s, qname)] < BOILERPLATE_DOCS)
        if len(text) < MIN_CHARS or text in seen:   # identical texts count once
            continue
        seen.add(text)
        names.append(qname)
        labels.append(label)
        texts.append(text)

    labels = _fold_labels(labels)
    counts = Counter(labels)
    keep = [i for i, lab in enumerate(labels) if counts[lab] >= MIN_DOCS_PER_LABEL]
    return [texts[i] for i in keep], [labels[i] for i in keep], [names[i] for i in keep]


def versions():
    from importlib.metadata import version
    return {"numpy": version("numpy"), "scipy": version("scipy"),
            "scikit-learn": version("scikit-learn")}


def write(path, texts, labels, names):
    """gzipped JSON lines, the same bytes for the same documents (gzip mtime 0)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for text, label, name in zip(texts, labels, names):
            line = json.dumps({"label": label, "name": name, "text": text}, ensure_ascii=False)
            gz.write(line.encode("utf-8") + b"\n")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def main():
    import argparse
    ap = argparse.ArgumentParser(description="build the built-in docstring corpus")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "minembed",
                                                  "builtin", "docstrings.jsonl.gz"))
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = ap.parse_args()
    texts, labels, names = build()
    print(f"{len(texts)} documents, {len(set(labels))} labels from {versions()}")
    if args.check:
        with gzip.open(args.out, "rt", encoding="utf-8") as f:
            shipped = [json.loads(line) for line in f]
        same = ([(d["text"], d["label"], d["name"]) for d in shipped]
                == list(zip(texts, labels, names)))
        print("identical to the shipped corpus" if same else "DIFFERS from the shipped corpus")
        return 0 if same else 1
    write(args.out, texts, labels, names)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
