"""Every Python block of the README and of docs/ runs as written, copied alone into a fresh interpreter."""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
BLOCKS = [
    (os.path.relpath(doc, ROOT), i, block)
    for doc in DOCS
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", open(doc).read(), flags=re.DOTALL))
]


def test_the_readme_has_its_examples():
    assert sum(doc == "README.md" for doc, _, _ in BLOCKS) >= 4


@pytest.mark.parametrize("doc,index,block", BLOCKS, ids=[f"{d}-{i}" for d, i, _ in BLOCKS])
def test_python_block_runs_alone(doc, index, block, tmp_path, fashion_mnist):
    script = tmp_path / "block.py"
    script.write_text(block)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}  # 8 simulated devices, as the tests have
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"{doc}, Python block {index}:\n{proc.stderr[-3000:]}"
    if "TrainConfig" in block and "seed=(0, 1)" in block:  # the quick start: one epoch of 4096 examples
        accuracies = [float(a) for a in re.findall(r"0\.\d+", proc.stdout.splitlines()[0])]
        assert len(accuracies) == 2 and min(accuracies) > 0.5, proc.stdout  # chance is 0.1
    if "load_run" in block:
        assert proc.stdout.splitlines()[-1] == "True", proc.stdout
