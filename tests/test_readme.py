"""The README's Python examples run as written, in order, as one script."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_examples_run_as_written(tmp_path, fashion_mnist):
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) >= 3
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}  # 8 simulated devices, as the tests have
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracies = [float(a) for a in re.findall(r"0\.\d+", proc.stdout.splitlines()[-2])]
    assert len(accuracies) == 2 and min(accuracies) > 0.5, (
        proc.stdout
    )  # one epoch of 4096 examples; chance 0.1
