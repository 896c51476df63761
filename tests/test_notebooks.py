"""Every notebook runs top to bottom on the tiny budget, on one device and on 8, and learns above chance."""

import base64
import glob
import os
import re

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "notebooks", "[0-9]*.py")))
# notebook -> (devices to run it on, a printed accuracy, the least it must reach; chance is 0.1).
# Measured on the tiny budget (2-core CPU): 01 0.7685, 02 0.7150, 03 0.2755 (a tiny CNN after 50 steps).
RUNS = {
    "01_quickstart.py": ((1,), r"SID: final test accuracy (0\.\d+)", 0.5),
    "02_beliefs_and_depth.py": ((1,), r"alpha 0\.5: final test accuracy (0\.\d+)", 0.5),
    "03_parallel_modules.py": ((1, 8), r"pipelined\s*: test accuracy of the last block (0\.\d+)", 0.2),
    "04_your_own_model.py": ((1,), r"SID: final test accuracy (0\.\d+)", 0.3),
}


@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_ipynb_is_the_paired_source_with_outputs_cleared(source):
    paired = nbformat.read(source[: -len(".py")] + ".ipynb", as_version=4)
    expected = jupytext.read(source)
    assert [c.source for c in paired.cells] == [c.source for c in expected.cells], (
        f"{source}: run `jupytext --to ipynb {source}` (the .ipynb is out of date)"
    )
    assert all(not c.get("outputs") for c in paired.cells if c.cell_type == "code"), "clear the outputs"


# 03 on one device (the mesh skipped, the stages sharing the device) runs with the slow tests.
CASES = [
    pytest.param(name, d, marks=[pytest.mark.slow] if (name, d) == ("03_parallel_modules.py", 1) else [])
    for name, (counts, *_) in RUNS.items()
    for d in counts
]


@pytest.mark.parametrize("name,devices", CASES, ids=lambda v: str(v))
def test_notebook_runs_top_to_bottom_on_the_tiny_budget(name, devices, tmp_path, monkeypatch, fashion_mnist):
    monkeypatch.setenv("SIDJAX_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("SIDJAX_NOTEBOOK_DEVICES", str(devices))
    monkeypatch.setenv("XLA_FLAGS", "")  # the kernel chooses its own device count
    notebook = jupytext.read(os.path.join(ROOT, "notebooks", name))
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # a failing cell raises CellExecutionError
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert f"{devices} device" in text or name != "03_parallel_modules.py", text[:300]
    _, pattern, least = RUNS[name]
    assert float(re.search(pattern, text).group(1)) > least, text
    if name == "04_your_own_model.py":
        assert "loaded == returned: True" in text, text
    if name == "03_parallel_modules.py":  # tiny ViT, K = 4, one program per block: measured 0.25x BP's memory
        assert float(re.search(r"^\| 4 \|.* \| (\d\.\d+) \|$", text, flags=re.M).group(1)) < 0.5, text
    pngs = [base64.b64decode(o["data"]["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert pngs and min(len(p) for p in pngs) > 5_000, f"{name} rendered no plot"
    export = os.environ.get("SIDJAX_NOTEBOOK_PNG_DIR")  # to look at them
    if export:
        os.makedirs(export, exist_ok=True)
        for i, png in enumerate(pngs):
            with open(os.path.join(export, f"{name[:-3]}_{devices}dev_{i}.png"), "wb") as f:
                f.write(png)
