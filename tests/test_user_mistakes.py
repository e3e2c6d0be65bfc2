"""Bad input, as a user types it: one line naming what is wrong, exit status 2, no traceback,
and nothing created or lost. The command line is called as a function (in this process), so
each case takes milliseconds; tests/test_run_cli.py runs the same kind of case as a process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from hpo.cli import main
from hpo.spec.names import study_folder

STUDIES = Path(__file__).resolve().parent.parent / "studies"


@pytest.fixture(autouse=True)
def _own_signal_handlers():
    """`hpo run` installs its SIGINT and SIGTERM handlers; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def _fails_in_one_line(capsys, argv: list[str], *expected: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


def _study(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


DIGITS = """\
[study]
n_trials = 2
[data]
n_samples = 300
[model]
hidden_size_list = [8]
[train]
epochs = 2
[search.lr]
type = "float"
low = 1e-3
high = 1e-1
log = true
"""


def test_an_empty_study_file_says_what_is_missing(capsys, tmp_path):
    study = _study(tmp_path, "")
    storage = tmp_path / "s.db"
    argv = ["run", str(study), "--storage", f"sqlite:///{storage}", "--no-mlflow"]
    _fails_in_one_line(capsys, argv, "the study searches nothing", "[search.lr]")
    assert not storage.exists()


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("n_trials = 2", "n_trials = 99999999999999999999999", "study.n_trials: must be an "),
        ("epochs = 2", "epochs = 10000000000000", "train.epochs: must be at most 100,000"),
        (
            "hidden_size_list = [8]",
            "hidden_size_list = [8]\nn_hidden_layers = 100000000",
            "model.n_hidden_layers: must be at most 100, but got 100000000",
        ),
        (
            "hidden_size_list = [8]",
            "n_hidden_layers = 1000000000\nhidden_size = 8",
            "model.n_hidden_layers: must be at most 100",
        ),
        ("low = 1e-3", "low = 1" + "0" * 5000, "invalid TOML"),
        ("n_samples = 300", "val_fraction = 1e-9", "val_fraction=1e-09 of 1797 samples"),
    ],
)
def test_numbers_that_would_exhaust_memory_or_time_are_refused_at_once(
    capsys, tmp_path, replace, by, expected
):
    text = DIGITS.replace(replace, by) + '[pruner]\nname = "median"\nn_warmup_steps = 1\n'
    study = _study(tmp_path, text)
    storage = tmp_path / "s.db"
    _fails_in_one_line(capsys, ["run", str(study), "--storage", f"sqlite:///{storage}",
                                "--no-mlflow", "--no-progress"], expected)  # fmt: skip
    assert not storage.exists() or not optuna.get_all_study_summaries(f"sqlite:///{storage}")


@pytest.mark.parametrize(
    "name", ["../../../escape", "/abs/path", "a/b", "..", "bad\nline", "nul\x00", "x" * 101]
)
def test_a_new_study_cannot_take_a_name_that_steers_files_or_breaks_databases(
    capsys, tmp_path, name
):
    study = _study(tmp_path, DIGITS)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    argv = ["run", str(study), "--study-name", name, "--storage", storage, "--no-mlflow"]
    _fails_in_one_line(capsys, argv, "cannot name a new study")
    assert optuna.get_all_study_summaries(storage) == []


def test_a_report_folder_never_leaves_its_root(tmp_path):
    root = tmp_path / "reports"
    for name in ("../../../x", "/etc/passwd", "..", "a/../../b", "ok-name.1"):
        folder = study_folder(root, name)
        assert folder.resolve().is_relative_to(root.resolve()), (name, folder)
        assert folder.parent == root
    assert study_folder(root, "ok-name.1") == root / "ok-name.1"


def test_missing_data_creates_no_study_and_names_the_command_that_fetches_it(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "nowhere"))
    storage = tmp_path / "s.db"
    for workers in ("1", "2"):
        err = _fails_in_one_line(
            capsys,
            ["run", str(STUDIES / "book-6.5.toml"), "--storage", f"sqlite:///{storage}",
             "--no-mlflow", "--workers", workers],
            "Run `hpo download mnist` to fetch them",
        )  # fmt: skip
        assert "download=True" not in err
    assert not storage.exists()


def test_corrupt_data_creates_no_study(capsys, tmp_path, mnist_dir):
    broken = tmp_path / "data" / "mnist"
    broken.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (broken / name).write_bytes((mnist_dir / name).read_bytes()[:5000])  # truncated
    storage = tmp_path / "s.db"
    _fails_in_one_line(capsys, ["run", str(STUDIES / "book-6.5.toml"), "--data-dir",
                                str(broken), "--storage", f"sqlite:///{storage}",
                                "--no-mlflow", "--workers", "2"], str(broken))  # fmt: skip
    assert not storage.exists()


def test_commands_that_only_read_create_no_database(capsys, tmp_path):
    typo = tmp_path / "typo.db"
    for argv in (["status"], ["status", "x"], ["export", "x"], ["best", "x", "--no-mlflow"]):
        _fails_in_one_line(capsys, [*argv, "--storage", f"sqlite:///{typo}"],
                           f"there is no database at {typo}")  # fmt: skip
    assert not typo.exists()
    assert not typo.with_name("typo.db.hpo-locks").exists()


def test_urls_are_masked_in_every_message(capsys, monkeypatch):
    monkeypatch.setenv("HPO_STORAGE", "postgresql+psycopg:/hpo:S3CRETPW@127.0.0.1/hpo")
    err = _fails_in_one_line(capsys, ["status"], "is not a database URL")
    assert "S3CRETPW" not in err
    monkeypatch.setenv("HPO_STORAGE", "postgresql+psycopg://hpo:S3CRETPW@127.0.0.1:abc/hpo")
    err = _fails_in_one_line(capsys, ["status"], "the port is not a number")
    assert "S3CRETPW" not in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "{study}", "--workers", "100000"], "--workers: must be from 1 to 256"),
        (["compare", "{study}", "--workers", "2"], "use --parallel 2"),
        (["compare", "{study}", "--seeds", "1000000000"], "--seeds: must be from 1 to 100"),
        (["train", "--seed", "-1"], "--seed: must be from 0 to"),
        (["train", "--epochs", "10000000"], "epochs: must be at most 100,000"),
        (["download", "mnist", "--timeout", "inf"], "--timeout: must be from 0.1 to 3,600"),
        (["sync-mlflow", "x", "--settle", "-5"], "--settle: must be from 0 to 86,400"),
        (["report", "x", "--top", "100000"], "--top: must be from 1 to 100"),
    ],
)
def test_flags_are_bounded_too(capsys, tmp_path, argv, expected):
    study = _study(tmp_path, DIGITS)
    argv = [a.replace("{study}", str(study)) for a in argv]
    _fails_in_one_line(capsys, argv, expected)


def test_data_errors_name_this_command_lines_flags(capsys, tmp_path):
    _fails_in_one_line(capsys, ["train", "--dataset", "mnist", "--data-dir", str(tmp_path)],
                       "hpo download mnist")  # fmt: skip
    err = _fails_in_one_line(
        capsys,
        ["download", "mnist", "--data-dir", str(tmp_path / "d"), "--test-only",
         "--base-url", f"file://{tmp_path}/no-mirror", "--timeout", "2"],
        "Pass another --base-url",
    )  # fmt: skip
    assert "base_url" not in err


def test_compare_checks_its_data_before_it_trains_anything(capsys, tmp_path):
    """Digits without test_fraction keeps no test split: refused before any study exists."""
    study = _study(tmp_path, DIGITS.replace("n_samples = 300\n", ""))
    storage = f"sqlite:///{tmp_path / 'c.db'}"
    _fails_in_one_line(capsys, ["compare", str(study), "--storage", storage, "--no-mlflow",
                                "--seeds", "2", "--pruners", "none",
                                "--out", str(tmp_path / "out")],
                       "hpo compare evaluates on the test split")  # fmt: skip
    assert not (tmp_path / "c.db").exists() or optuna.get_all_study_summaries(storage) == []


# -- the disk: full, or read-only (tmpfs mounts: root only) ----------------------------------


@pytest.fixture
def mount_tmpfs(tmp_path):
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, check=False)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_sqlite_file_in_a_read_only_place_is_one_line(capsys, mount_tmpfs, tmp_path):
    read_only = mount_tmpfs("ro", "size=1m,ro")
    study = _study(tmp_path, DIGITS)
    argv = ["run", str(study), "--storage", f"sqlite:///{read_only}/s.db", "--no-mlflow"]
    _fails_in_one_line(capsys, argv, "Read-only file system")


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_next_run_finishes_the_study(mount_tmpfs, tmp_path):
    disk = mount_tmpfs("full", "size=400k")
    study = _study(tmp_path, DIGITS.replace("n_trials = 2", "n_trials = 400"), "tiny.toml")
    storage = f"sqlite:///{disk}/s.db"
    env = {"HPO_GRACE_PERIOD": "3", "HPO_HEARTBEAT_INTERVAL": "1", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "hpo.cli", "run", str(study), "--storage", storage,
               "--no-mlflow", "--no-progress"]  # fmt: skip
    full = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert full.returncode == 2, full.stderr
    assert "Traceback" not in full.stderr
    assert full.stderr.strip().splitlines()[-1].startswith("hpo run: error: out of disk space")
    subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 400
    assert "RUNNING" not in states
    print(f"\nfull disk: {states.count('FAIL')} trial(s) failed and retried")
