"""Each notebook runs top to bottom (small versions: INNV_PATTERN_QUICK=1) and is
committed with its outputs cleared.

The kernel is this interpreter (a kernelspec written to a temporary JUPYTER_PATH
entry, which takes precedence over any user-wide ``python3`` kernel), so the
notebooks run against the package installed here, in a fresh venv as well.
"""

import json
import os
import sys
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
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{path.name}: clear the outputs before committing"


@pytest.fixture(scope="module")
def executed(kernel, tmp_path_factory) -> dict[str, Future]:
    """All notebooks, started at once (each kernel is its own process; most of the time is
    TensorFlow starting and tracing, which overlaps well)."""
    pool = ThreadPoolExecutor(max_workers=len(NOTEBOOKS))
    futures = {path.stem: pool.submit(_execute, path, kernel, tmp_path_factory.mktemp(path.stem))
               for path in NOTEBOOKS}
    yield futures
    pool.shutdown(wait=True)


def _execute(path: Path, kernel: str, workdir: Path) -> list[dict]:
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=400,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, executed):
    assert executed[path.stem].result() == []
