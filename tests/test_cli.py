"""The `hpo` command: a function returning an exit status, and the installed console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from hpo.cli import main
from trainer import load_network
from trainer.data import load_dataset


def test_train_prints_one_line_per_epoch_and_learns(capsys):
    assert main(["train", "--epochs", "6", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert [line.split()[1] for line in epoch_lines] == [f"{e}/6" for e in range(1, 7)]
    accuracies = [float(line.split("val loss")[1].split()[2]) for line in epoch_lines]
    assert accuracies[-1] > 0.85
    assert accuracies[-1] > accuracies[0]
    assert "digits: 1437 training and 360 validation samples" in out


def test_train_is_reproducible_and_saves_a_loadable_network(tmp_path, capsys):
    args = ["train", "--epochs", "3", "--batchnorm", "--dropout", "0.1", "--seed", "7"]
    assert main([*args, "--save", str(tmp_path / "a.npz")]) == 0
    first = capsys.readouterr().out
    assert main([*args, "--save", str(tmp_path / "b.npz")]) == 0
    second = capsys.readouterr().out
    strip_times = [line.rsplit("(", 1)[0] for line in first.splitlines() if "epoch" in line]
    assert strip_times == [
        line.rsplit("(", 1)[0] for line in second.splitlines() if "epoch" in line
    ]
    a, b = load_network(tmp_path / "a.npz"), load_network(tmp_path / "b.npz")
    assert np.array_equal(a.flat_params, b.flat_params)
    x = load_dataset("digits").x[:50]
    assert np.array_equal(a.predict(x), b.predict(x))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--optimizer", "adamw"], "optimizer: must be one of"),
        (["train", "--lr", "-1"], "lr must be in (0, inf), but got lr=-1.0"),
        (["train", "--activation", "gelu"], "activation must be one of"),
        (["train", "--dropout", "1.5"], "dropout_ratio must be in [0, 1)"),
        (["train", "--dataset", "cifar"], "dataset: must be one of"),
        (["train", "--hidden", "10,x"], "expected comma-separated integers"),
        (["train", "--epochs", "0"], "epochs: must be a positive integer"),
        (["train", "--val-fraction", "1.5"], "val_fraction: must be a number in (0, 1)"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args, expected, capsys):
    try:
        status = main(args)
    except SystemExit as exit_:  # argparse's own usage errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert expected in err
    assert "Traceback" not in err


def test_missing_data_directory_names_it_and_exits_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "t10k-images-idx3-ubyte.gz" in err


def test_divergence_exits_1_with_advice(capsys):
    status = main(["train", "--optimizer", "sgd", "--lr", "1e5", "--epochs", "3"])
    err = capsys.readouterr().err
    assert status == 1
    assert "diverged in epoch 1" in err
    assert "smaller learning rate" in err


def test_download_from_a_local_mirror_then_train_on_it(tmp_path, mnist_dir, capsys):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, mirror / name)
    target = tmp_path / "data"
    url = mirror.as_uri() + "/"
    args = ["download", "mnist", "--data-dir", str(target), "--base-url", url, "--test-only"]
    assert main(args) == 0
    assert "files verified" in capsys.readouterr().out
    assert (target / "t10k-images-idx3-ubyte.gz").read_bytes() == (
        mnist_dir / "t10k-images-idx3-ubyte.gz"
    ).read_bytes()
    args = ["train", "--dataset", "mnist", "--data-dir", str(target)]
    assert main([*args, "--n-samples", "500", "--epochs", "2"]) == 0
    assert "mnist: 400 training and 100 validation samples of 784 features" in (
        capsys.readouterr().out
    )


def test_console_script_runs_in_a_fresh_process(tmp_path):
    """The installed `hpo` entry point, as a user runs it: real process, real exit status."""
    script = Path(sys.executable).with_name("hpo")
    done = subprocess.run(
        [str(script), "train", "--epochs", "2", "--hidden", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "epoch   2/2" in done.stdout
    bad = subprocess.run(
        [str(script), "train", "--weight-init", "glorot"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0  # one line, no traceback
    assert "weight_init_std must be one of ['he', 'xavier']" in bad.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`hpo status | head -1`: the pipe closes before hpo writes; no traceback, status 141."""
    optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'empty.db'}")  # tables, no study
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before hpo has even started
    try:
        done = subprocess.run(
            [sys.executable, "-m", "hpo.cli", "status",
             "--storage", f"sqlite:///{tmp_path / 'empty.db'}"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def _on_a_terminal(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run `hpo ARGV` with its standard error on a pseudo-terminal, as a user sees it."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a window
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
        stderr=follower, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process has ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_long_commands_show_their_progress_on_a_terminal(tmp_path, mnist_dir, tiny_study_file):
    code, screen = _on_a_terminal(
        ["download", "mnist", "--test-only", "--data-dir", str(tmp_path / "m"),
         "--base-url", mnist_dir.as_uri()],
        tmp_path,
    )  # fmt: skip
    assert code == 0, screen
    assert "t10k-images-idx3-ubyte.gz" in screen  # the bar of the file being fetched
    assert "/1.65M" in screen, screen  # its size, in bytes per second units
    study = tiny_study_file(n_trials=2, epochs=3)
    text = study.read_text().replace("n_samples = 600", "n_samples = 600\ntest_fraction = 0.2")
    study.write_text(text)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    code, screen = _on_a_terminal(["run", str(study), "--storage", storage, "--no-mlflow"],
                                  tmp_path)  # fmt: skip
    assert code == 0, screen
    assert "trial/s" in screen or "trial]" in screen, screen
    code, screen = _on_a_terminal(["best", "tiny", "--storage", storage, "--no-mlflow",
                                   "--retrain"], tmp_path)  # fmt: skip
    assert code == 0, screen
    assert "retraining trial" in screen, screen
