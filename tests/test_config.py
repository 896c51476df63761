"""TrainConfig and the command line generated from it: every field a flag, one-line errors naming it."""

import dataclasses
import os
import subprocess
import sys

import pytest

from sidjax import __version__
from sidjax.errors import ConfigError
from sidjax.train import cli
from sidjax.train.config import GROUPS, TrainConfig, field_help, migrate
from sidjax.train.plan import make_plan

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def test_every_field_has_help_a_group_and_a_flag_with_its_default():
    assert sorted(field_help()) == sorted(FIELDS)
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(FIELDS) and len(grouped) == len(set(grouped))
    defaults = vars(cli.build_parser().parse_args([]))
    assert {name: defaults[name] for name in FIELDS} == dataclasses.asdict(TrainConfig())
    text = cli.build_parser().format_help()
    for name in FIELDS:
        assert cli.flag(name) in text
    for title in (*GROUPS, "run", "multi-process", "SIDJAX_FASHION_MNIST_DIR", "JAX_COORDINATOR_ADDRESS"):
        assert title in text


def test_flags_parse_into_the_config_they_name():
    args = cli.build_parser().parse_args(
        ["--alpha", "0.9,0.1", "--seeds", "0,1,2", "--mode", "blockwise", "--num-blocks", "2", "--pipelined",
         "--no-augment", "--limit-train", "100", "--lr", "0.01"]
    )  # fmt: skip
    config = cli.config_from_args(args)
    assert config == TrainConfig(alpha=(0.9, 0.1), seed=(0, 1, 2), mode="blockwise", num_blocks=2, pipelined=True,
                                 augment=False, limit_train=100, lr=0.01)  # fmt: skip
    assert TrainConfig.from_record(config.record()) == config


def test_records_of_earlier_versions_migrate():
    old = {**TrainConfig(mode="blockwise").record(), "pipeline": "pipelined", "devices": 0, "mesh": None}
    for key in ("pipelined", "placement"):
        old.pop(key)
    assert TrainConfig.from_record(old).pipelined and TrainConfig.from_record(old).placement == "stages"
    assert migrate({"pipeline": "off", "mesh": [2, 4]})["placement"] == "mesh:2,4"
    assert migrate({"pipeline": "synchronous", "devices": 4}) == {"pipelined": False, "placement": "stages:4"}


@pytest.mark.parametrize(
    "settings,field,message",
    [
        ({"alpha": 1.5}, "alpha", "alpha must lie in [0, 1]"),
        ({"lr": float("nan")}, "lr", "lr must be a finite number in (0, inf)"),
        ({"lr": float("inf")}, "lr", "lr must be a finite number"),
        ({"weight_decay": -1.0}, "weight_decay", "weight_decay must be a finite number in [0, inf)"),
        ({"momentum": 1.0}, "momentum", "momentum must be a finite number in [0, 1)"),
        ({"label_noise": 1.5}, "label_noise", "label_noise must be a finite number in [0, 1]"),
        ({"label_smoothing": 1.0}, "label_smoothing", "label_smoothing must lie in [0, 1)"),
        ({"divergence": "reverse"}, "divergence", "divergence 'reverse' needs label_smoothing > 0"),
        ({"seed": -1}, "seed", "seed must be distinct integers"),
        ({"seed": (1, 1)}, "seed", "seed must be distinct integers"),
        (
            {"seed": (0, 1), "placement": "mesh:1,2"},
            "seed",
            "several seeds or grid points train together on a single device",
        ),
        ({"epochs": 0}, "epochs", "epochs must be an integer >= 1"),
        ({"batch_size": 2.5}, "batch_size", "batch_size must be an integer >= 1"),
        ({"limit_train": 0}, "limit_train", "limit_train must be an integer >= 1"),
        ({"method": "adam"}, "method", "method must be one of"),
        ({"method": "dgl"}, "method", "method 'dgl' trains blockwise networks, not 'trunk'"),
        (
            {"method": "dgl", "mode": "blockwise", "divergence": "reverse", "label_smoothing": 0.1},
            "divergence",
            "method 'dgl' trains the cross-entropy of each head (alpha = 1): divergence must be 'forward'",
        ),
        (
            {"method": "dgl", "mode": "blockwise", "belief_input": "prob"},
            "belief_input",
            "method 'dgl' needs heads without belief input",
        ),
        ({"belief_input": "probs"}, "belief_input", "belief_input must be one of"),
        ({"validation": -1}, "validation", "validation must be an integer >= 0"),
        ({"placement": "mesh:2"}, "placement", "placement must be one of"),
        ({"placement": "stages"}, "placement", "placement stages needs mode blockwise"),
        ({"pipelined": True}, "pipelined", "pipelined needs mode blockwise"),
        ({"execution": "sequential"}, "execution", "execution 'sequential' needs mode blockwise"),
    ],
)
def test_bad_settings_name_their_field(settings, field, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**settings)
    assert err.value.field == field and message in str(err.value)


@pytest.mark.parametrize(
    "settings,field,message",
    [
        ({"model": "resnet1000"}, "model", "model must be one of"),
        (
            {"mode": "blockwise", "model": "vit_tiny", "head": "dgl"},
            "head",
            "head 'dgl' needs [H, W, C] feature maps",
        ),
        ({"mode": "blockwise", "head": "attention"}, "head", "head must be one of"),
        ({"limit_train": 100, "validation": 100}, "validation", "validation 100 leaves none of the 100"),
        ({"alpha": (0.9, 0.1)}, "alpha", "alpha has 2 values but the network has 10 units"),
    ],
)
def test_settings_that_need_the_architecture_or_the_data_are_refused_by_the_plan(settings, field, message):
    config = TrainConfig(**settings)  # valid on its own
    with pytest.raises(ConfigError) as err:
        make_plan(config)
    assert err.value.field == field and message in str(err.value)


BAD_COMMAND_LINES = [
    (["--alpha", "1.5"], "error: --alpha must lie in [0, 1], got 1.5"),
    (["--lr", "nan"], "error: --lr must be a finite number in (0, inf), got nan"),
    (["--seed", "-3"], "error: --seed must be distinct integers"),
    (["--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    (["--method", "adam"], "--method must be one of ('sid', 'dgl'"),
    (["--dataset", "imagenet5"], "error: --dataset must be one of"),
    (
        ["--mode", "blockwise", "--model", "resnet18", "--num-blocks", "3"],
        "error: --num-blocks 3: resnet18 can be cut",
    ),
    (["--mode", "blockwise", "--num-blocks", "5"], "can be cut into K in [1, 2, 3, 4]"),
    (
        ["--mode", "blockwise", "--execution", "vmap"],
        "error: --execution 'vmap' needs identical (stacked) units",
    ),
    (["--batch-size", "100000"], "error: --batch-size 100000 is larger than the 60000 training examples"),
    (["--limit-train", "100", "--batch-size", "128"], "larger than the 100 training examples"),
    (["--placement", "mesh:16,1"], "error: --placement: a (16, 1) mesh needs 16 devices"),
    (["--placement", "mesh:1,3"], "the mesh's unit axis (3) must divide the number of units (10)"),
    (["--validation", "60000"], "error: --validation 60000 leaves none of the 60000 training examples"),
    (
        ["--mode", "blockwise", "--method", "dgl", "--divergence", "reverse", "--label-smoothing", "0.1"],
        "error: method 'dgl' trains the cross-entropy of each head (alpha = 1): --divergence must be 'forward'",
    ),
    (["--placement", "mesh:3,1", "--batch-size", "128"], "must divide the batch size (128)"),
    (["--mode", "blockwise", "--placement", "stages:5"], "error: --placement: stages must lie in [1, 4]"),
    (["--resume"], "error: --resume needs --out: the directory of the run to continue"),
    (["--num-processes", "2"], "a multi-process run needs all three settings"),
    (["--dataset", "folder:/nowhere"], "an image folder needs train/ and test/"),
    (["--model", "resnet1000"], "argument --model: 'resnet1000' is neither one of ('mlp',"),
    (
        ["--model", "nowhere.models:net"],
        "error: --model nowhere.models:net: cannot import it (ModuleNotFoundError",
    ),
]


@pytest.mark.parametrize("argv,message", BAD_COMMAND_LINES)
def test_bad_command_lines_exit_with_one_line_before_any_data(argv, message, capsys, monkeypatch):
    import sidjax.data

    def no_loading(*args, **kwargs):
        raise AssertionError("data was loaded before the error")

    monkeypatch.setattr(sidjax.data, "load_dataset", no_loading)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *argv, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert message in err and "\n" not in err and err.startswith("error: ")


def test_out_that_is_a_file_or_cannot_be_written_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--out", str(tmp_path / "file"), "--no-progress"])
    assert exit_info.value.code == 2 and "error: --out " in capsys.readouterr().err
    # As root every directory is writable; an ordinary user's read-only directory is simulated.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--out", str(tmp_path / "new" / "run"), "--no-progress"])
    assert exit_info.value.code == 2 and "(permission denied)" in capsys.readouterr().err


def test_a_bad_flag_from_the_shell_prints_one_line_and_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "sidjax", "train", "--alpha", "2"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --alpha must lie in [0, 1], got 2.0"


def test_an_unknown_command_is_bad_input_and_help_and_version_are_not(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["fit"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown command 'fit'; usage: sidjax {train,compare}")
    cli.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: sidjax {train,compare}")
    cli.main(["--version"])
    assert capsys.readouterr().out == f"sidjax {__version__}\n"
    proc = subprocess.run(
        [sys.executable, "-m", "sidjax", "--version"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"sidjax {__version__}"
