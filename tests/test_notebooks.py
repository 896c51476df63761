"""Every notebook runs top to bottom on the tiny budget, renders its plots, and its .ipynb matches its .py."""

import base64
import glob
import os

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "notebooks", "[0-9]*.py")))


def test_there_are_three_notebooks():
    assert [os.path.basename(s) for s in SOURCES] == [
        "01_quickstart.py", "02_beliefs_and_depth.py", "03_parallel_modules.py",
    ]  # fmt: skip


@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_ipynb_is_the_paired_source_with_outputs_cleared(source):
    paired = nbformat.read(source[: -len(".py")] + ".ipynb", as_version=4)
    expected = jupytext.read(source)
    assert [c.source for c in paired.cells] == [c.source for c in expected.cells], (
        f"{source}: run `jupytext --sync {source}` (the .ipynb is out of date)"
    )
    assert all(not c.get("outputs") for c in paired.cells if c.cell_type == "code"), "clear the outputs"


@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_notebook_runs_top_to_bottom_on_the_tiny_budget(source, tmp_path, monkeypatch, fashion_mnist):
    monkeypatch.setenv("SIDJAX_NOTEBOOK_TINY", "1")
    notebook = jupytext.read(source)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # a failing cell raises CellExecutionError
    pngs = [
        base64.b64decode(output["data"]["image/png"])
        for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", []) if "image/png" in output.get("data", {})
    ]  # fmt: skip
    assert pngs, f"{source} rendered no plot"
    export = os.environ.get("SIDJAX_NOTEBOOK_PNG_DIR")  # to look at them
    if export:
        os.makedirs(export, exist_ok=True)
        for i, png in enumerate(pngs):
            with open(os.path.join(export, f"{os.path.basename(source)[:-3]}_{i}.png"), "wb") as f:
                f.write(png)
