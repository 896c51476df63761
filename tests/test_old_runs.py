"""Run directories written by an earlier sidjax (``tests/data/old_runs``) load and resume with this one."""

import json
import shutil

import chex
import pytest
from old_runs import CONFIGS, OLD_RUNS, config, toy

from sidjax.train.runner import load_run, run


@pytest.mark.parametrize("name", list(CONFIGS))
def test_an_old_run_directory_loads_and_resumes_to_the_numbers_of_a_run_today(name, tmp_path):
    copy = tmp_path / name
    shutil.copytree(f"{OLD_RUNS}/{name}", copy)
    written = (copy / "metrics.jsonl").read_text().splitlines()
    loaded = load_run(str(copy))
    today = run(config(name, 2), dataset=toy(), progress=False)
    chex.assert_trees_all_close(loaded.state, today.state, rtol=1e-5, atol=1e-6,
                                custom_message="the old checkpoint holds the state today's sidjax trains")  # fmt: skip
    assert loaded.summary["final_test_accuracy"] == today.summary["final_test_accuracy"]

    resumed = run(config(name, 3), str(copy), dataset=toy(), progress=False, resume=True)
    whole = run(config(name, 3), dataset=toy(), progress=False)
    chex.assert_trees_all_close(resumed.state, whole.state, rtol=1e-5, atol=1e-6,
                                custom_message="resumed from the old checkpoint == three epochs today")  # fmt: skip
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    assert lines[:2] == written and len(lines) == 3, "the old epochs are kept, the third appended"
    assert json.loads(lines[2])["test_accuracy"] == whole.summary["final_test_accuracy"]
