"""Each notebook runs top to bottom (small versions: INNV_PATTERN_QUICK=1) and is
committed executed, with its figures; a stored output that the fresh run no longer
gives fails the test.

Stale outputs: every code cell's fresh outputs are compared with the stored ones,
in order: the same kinds (text, figure, value), a figure wherever one is stored,
and the same text up to its numbers, which may differ by float rounding and
thread timing (:func:`same_text`: 5% or 1e-3); timings (samples/s) are ignored.
To store fresh outputs after a change: ``python tests/test_notebooks.py``.

The kernel is this interpreter (a kernelspec written to a temporary JUPYTER_PATH
entry, which takes precedence over any user-wide ``python3`` kernel), so the
notebooks run against the package installed here, in a fresh venv as well.
"""

import json
import os
import re
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
KERNEL = "innv-pattern-tests"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory, monkeypatch_module) -> str:
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "innv_pattern tests", "language": "python"}))
    monkeypatch_module.setenv("JUPYTER_PATH", os.pathsep.join(
        [str(root)] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]))
    monkeypatch_module.setenv("INNV_PATTERN_QUICK", "1")
    monkeypatch_module.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    return KERNEL


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_there_are_four_notebooks():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_executed_with_figures(path):
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), \
        f"{path.name}: store it executed top to bottom (python tests/test_notebooks.py)"
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    if "plot" in "".join(cell.source for cell in code):
        assert _figures(nb), f"{path.name} draws figures but stores none"


def _figures(nb) -> list[str]:
    return [o.data["image/png"] for cell in nb.cells for o in cell.get("outputs", [])
            if "image/png" in o.get("data", {})]


#: Output lines that report timing, not results.
TIMING = re.compile(r"samples/s|\bs/step|ms/step|\bETA\b")
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _text(output) -> str:
    """An output's text (streams, and the text/plain of values), without timing lines."""
    text = output.get("text") or output.get("data", {}).get("text/plain", "")
    return "\n".join(line for line in "".join(text).splitlines() if not TIMING.search(line))


def same_text(stored: str, fresh: str, rtol: float = 0.05, atol: float = 1e-3) -> bool:
    """Equal words, and numbers within ``rtol`` (relative) or ``atol`` (float-noise levels).

    Example:
        >>> same_text("accuracy 93.1%, difference 2e-07", "accuracy 92.8%, difference 1.3e-04")
        True
        >>> same_text("pattern a = [1.00 0.00]", "pattern a = [0.71 0.71]")
        False
    """
    if NUMBER.sub("#", stored).split() != NUMBER.sub("#", fresh).split():
        return False
    return all(abs(float(a) - float(b)) <= max(atol, rtol * max(abs(float(a)), abs(float(b))))
               for a, b in zip(NUMBER.findall(stored), NUMBER.findall(fresh)))


def _kinds(outputs) -> list[list]:
    """Each output's type and whether it is a figure; consecutive prints count once (how
    the kernel splits printed text into messages depends on timing)."""
    kinds = [[o.output_type, "image/png" in o.get("data", {})] for o in outputs]
    return [k for i, k in enumerate(kinds) if not (i and k[0] == "stream" == kinds[i - 1][0])]


def stale_outputs(stored_nb, fresh_nb, rtol: float = 0.05) -> list[str]:
    """What the stored notebook shows that the fresh run does not (one line per cell)."""
    problems = []
    code = [(a, b) for a, b in zip(stored_nb.cells, fresh_nb.cells) if a.cell_type == "code"]
    for number, (stored, fresh) in enumerate(code, 1):
        kinds, fresh_kinds = _kinds(stored.outputs), _kinds(fresh.outputs)
        texts = [_text(o) for o in stored.outputs], [_text(o) for o in fresh.outputs]
        if kinds != fresh_kinds:
            problems.append(f"cell {number}: stored outputs {kinds}, fresh {fresh_kinds}")
        elif not same_text("\n".join(texts[0]), "\n".join(texts[1]), rtol):
            problems.append(f"cell {number}: stored {texts[0]!r}, fresh {texts[1]!r}")
    return problems


@pytest.fixture(scope="module")
def executed(kernel, tmp_path_factory) -> dict[str, Future]:
    """All notebooks, started at once (each kernel is its own process; most of the time is
    TensorFlow starting and tracing, which overlaps well)."""
    pool = ThreadPoolExecutor(max_workers=len(NOTEBOOKS))
    futures = {path.stem: pool.submit(_execute, path, kernel, tmp_path_factory.mktemp(path.stem))
               for path in NOTEBOOKS}
    yield futures
    pool.shutdown(wait=True)


def _execute(path: Path, kernel: str, workdir: Path):
    """The notebook at ``path``, executed (errors stay in its outputs)."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=400, allow_errors=True,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    nb.metadata = nbformat.read(path, as_version=4).metadata     # the user's kernel, not ours
    for cell in nb.cells:       # stderr: TensorFlow's C++ start-up lines, which vary by machine
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_its_stored_outputs_are_current(path, executed):
    fresh = executed[path.stem].result()
    errors = [o for c in fresh.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == [], f"{path.name}: " + "\n".join(e.ename + ": " + e.evalue for e in errors)
    stale = stale_outputs(nbformat.read(path, as_version=4), fresh)
    assert stale == [], (f"{path.name} stores outputs the code no longer gives; store fresh ones "
                         "with 'python tests/test_notebooks.py':\n" + "\n".join(stale))


def _store_fresh_outputs(names: list[str]) -> None:
    """Executes the notebooks as the test does and stores them with their outputs.

    ``names``: stems such as ``04_large_datasets``; none given: every notebook.
    """
    chosen = [p for p in NOTEBOOKS if not names or p.stem in names]
    if len(chosen) < len(set(names)):
        raise SystemExit(f"Unknown notebook in {names}; known: {[p.stem for p in NOTEBOOKS]}")
    root = Path(tempfile.mkdtemp())
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "innv_pattern tests", "language": "python"}))
    os.environ.update(JUPYTER_PATH=str(root), INNV_PATTERN_QUICK="1", TF_CPP_MIN_LOG_LEVEL="3")
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        runs = {path: pool.submit(_execute, path, KERNEL, Path(tempfile.mkdtemp()))
                for path in chosen}
        for path, run in runs.items():
            nbformat.write(run.result(), path)
            print(f"stored {path.name}")


if __name__ == "__main__":
    _store_fresh_outputs(sys.argv[1:])
