"""The house's rules (docs/DESIGN.md), from the code: the floors import downwards only, no import
cycle, no function over 60 lines, no module over 400 lines, and the textbook (the import closure
of the loop, the pair sampler and the two encoders) within 650 code lines with no GPU machinery
in it."""
import ast
import io
import tokenize
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "minembed"
GPU_WORDS = ("cupy", "RawKernel", "RawModule", "nvrtc", "kernels.cu", "use_kernels")


def modules():
    """{dotted name inside the package ("core.bag", "product.cli"): path}."""
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports():
    """{module: the package's modules it imports, at any depth (lazy imports too)}."""
    mods, graph = modules(), {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".") if package else []
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                elif base.startswith("minembed"):
                    base = base.removeprefix("minembed").lstrip(".")
                else:
                    continue
                targets = [base] + [f"{base}.{a.name}".lstrip(".") for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("minembed.") for a in node.names
                           if a.name.startswith("minembed.")]
            deps |= {t for t in targets if t in mods and t not in ("", name)}
        graph[name] = deps
    return graph


def floor(name):
    return name.split(".")[0] if name.split(".")[0] in ("core", "fast", "product") else name


def test_the_floors_import_downwards_only():
    allowed = {"core": {"core", "errors"}, "fast": {"core", "fast", "errors"}, "errors": set()}
    graph = imports()
    assert {"core.train", "core.pairs", "fast.cpu", "product.run", "product.cli"} <= set(graph)
    for name, deps in graph.items():
        if floor(name) in allowed:
            outside = {d for d in deps if floor(d) not in allowed[floor(name)]}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_no_import_cycles():
    graph, state = imports(), {}

    def visit(node, stack):
        state[node] = "open"
        for dep in graph[node]:
            if state.get(dep) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(stack + [node, dep])}")
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_no_function_over_60_lines_and_no_module_over_400():
    long_functions, big_modules = [], []
    for name, path in modules().items():
        src = path.read_text()
        if src.count("\n") > 400:
            big_modules.append(f"{name} {src.count(chr(10))}")
        for node in ast.walk(ast.parse(src)):
            length = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and length > 60:
                long_functions.append(f"{name}.{node.name} {length}")
    assert not long_functions and not big_modules, (long_functions, big_modules)


def code_lines(src):
    """Lines holding code: no blank lines, comments or docstrings."""
    doc = set()
    for n in ast.walk(ast.parse(src)):
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            e = n.body[0] if n.body else None
            if isinstance(e, ast.Expr) and isinstance(getattr(e.value, "value", None), str):
                doc.update(range(e.lineno, e.end_lineno + 1))
    lines = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER)
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type not in skip:
            lines.update(x for x in range(tok.start[0], tok.end[0] + 1) if x not in doc)
    return len(lines)


def textbook():
    """The modules a learner reads to follow one step: the closure of the loop, the sampler and
    the encoders (modules defining both init_params and forward)."""
    mods, graph = modules(), imports()

    def defines(path, names):
        return any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names
                   for n in ast.walk(ast.parse(path.read_text())))
    todo = [m for m, p in mods.items() if defines(p, {"train_loop", "PairSampler"})
            or defines(p, {"init_params"}) and defines(p, {"forward"})]
    closure = set()
    while todo:
        m = todo.pop()
        if m not in closure:
            closure.add(m)
            todo += graph[m]
    return {m: mods[m] for m in closure}


def test_the_textbook_is_short_and_names_no_gpu_machinery():
    book = textbook()
    assert {"core.train", "core.pairs", "core.bag", "core.transformer", "core.layers"} <= set(book)
    assert all(floor(m) in ("core", "errors") for m in book), sorted(book)
    total = sum(code_lines(p.read_text()) for p in book.values())
    assert total <= 650, f"the textbook is {total} code lines (at most 650)"
    gpu = sorted(m for m, p in book.items() if any(w in p.read_text() for w in GPU_WORDS))
    assert not gpu, f"GPU machinery in the textbook: {gpu}"


def test_the_reference_functions_branch_into_no_twin():
    """A marked function is the maths: no `if ... xp is np`, no call into minembed.fast."""
    for name, path in textbook().items():
        src = path.read_text()
        assert "xp is np" not in src and "xp is not np" not in src, name
        assert "fast" not in {d.split(".")[0] for d in imports()[name]}, name
