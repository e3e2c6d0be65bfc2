"""`hpo best`: a study's best trial; with --retrain, its test figures and its MLflow model."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from hpo.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Commands,
    progress_bar,
    storage_flag,
    tracking_flags,
    tracking_from,
)

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.analysis.best import HeldOutResult, Retrained
    from hpo.spec.study_file import StudySpec
    from hpo.storage.database import StorageSettings
    from hpo.tracking.runs import TrackingClient, TrackingSettings


def _add_best_parser(commands: Commands) -> None:
    p = commands.add_parser(
        "best",
        help="the best trial; --retrain tests it once and publishes it to MLflow",
        description="Show a study's best completed trial. With --retrain, train it again with "
        "its seed (it must reproduce the recorded value exactly), evaluate it once on the "
        "held-out test split, and log the test figures and the network, as an MLflow pyfunc "
        "model, to the study's parent run.",
    )
    p.add_argument("name")
    storage_flag(p)
    tracking_flags(p)
    p.add_argument(
        "--retrain",
        action="store_true",
        help="retrain the best trial, test it once, and log it to MLflow (unless --no-mlflow)",
    )
    p.add_argument(
        "--register",
        metavar="MODEL_NAME",
        help="register the model that --retrain logs in MLflow's model registry",
    )
    p.set_defaults(handler=_cmd_best)


def _cmd_best(args: argparse.Namespace) -> int:
    from hpo.analysis.best import best_trial
    from hpo.analysis.results import open_study
    from hpo.storage.database import resolve_storage
    from hpo.tracking.runs import make_client

    settings, tracking = resolve_storage(args.storage), tracking_from(args)
    _check_register(args, tracking)
    study, spec = open_study(args.name, storage=settings)
    if args.retrain:
        spec.require_training("hpo best --retrain")
    trial = best_trial(study)
    client = make_client(tracking) if tracking.enabled else None
    _show_best(args.name, study, spec, trial, _run_id_text(client, tracking, study, trial))
    if not args.retrain:
        return EXIT_OK
    retrained = _retrain(spec, trial)
    if retrained is None:
        return EXIT_FAILURE

    from hpo.analysis.best import evaluate_on_test

    test = evaluate_on_test(retrained)
    print(
        f"test split ({test.n_samples} samples, {test.source}): loss {test.loss:.6g}, "
        f"acc {test.acc:.6g}"
    )
    if client is None:
        return EXIT_OK
    return _publish(args, client, tracking, settings, spec, study, retrained, test)


def _check_register(args: argparse.Namespace, tracking: TrackingSettings) -> None:
    """--register needs MLflow, --retrain and a name the registry takes: said before any work."""
    from hpo.errors import ConfigError
    from hpo.tracking.best_model import check_model_name
    from hpo.tracking.runs import require_enabled

    if args.register is not None:
        require_enabled(tracking, "--register")
        if not args.retrain:
            raise ConfigError("--register registers the model that --retrain logs; add --retrain")
        check_model_name(args.register)


def _show_best(
    name: str, study: optuna.Study, spec: StudySpec, trial: FrozenTrial, run_id_text: str
) -> None:
    from optuna.trial import TrialState

    from hpo.analysis.best import describe_params
    from hpo.spec.outcomes import is_selection, selection_estimates

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n_search = sum(not is_selection(t) for t in complete)
    estimates = selection_estimates(study)
    if estimates:
        winner = estimates[0]
        print(
            f"{name}: trial {trial.number} won the selection among the {len(estimates)} best "
            f"of {n_search} completed trials: {spec.study.metric} {winner.mean:.6g} ± "
            f"{winner.std:.2g} (mean ± standard deviation of {winner.n} trainings; its search "
            f"value {trial.value!r})"
        )
        for rank, other in enumerate(estimates[1:], start=2):
            print(
                f"  finalist {rank}: trial {other.trial.number}, {other.mean:.6g} ± "
                f"{other.std:.2g} over {other.n}"
            )
    else:
        scores = trial.user_attrs.get("scores")
        spread = (
            f" (mean of {len(scores)} trainings: {', '.join(f'{v:.4g}' for v in scores)})"
            if scores
            else ""
        )
        print(
            f"{name}: best of {n_search} completed trials is trial {trial.number}: "
            f"{spec.study.metric} {trial.value!r}{spread}"
        )
    print(f"  params: {describe_params(trial.params)}")
    print(f"  seed: {trial.user_attrs.get('seed', 'unknown')}")
    print(f"  MLflow run: {run_id_text}")


def _retrain(spec: StudySpec, trial: FrozenTrial) -> Retrained | None:
    """The best trial trained again, with a progress bar; None (and why, on stderr) if it did
    not reproduce the recorded value, so that the test split stays unused."""
    from hpo.analysis.best import retrain

    metric = spec.study.metric
    epochs = progress_bar(spec.base.epochs, f"retraining trial {trial.number}", unit="epoch")
    try:
        retrained = retrain(spec, trial, on_epoch_end=lambda epoch, _metrics: epochs.update())
    finally:
        epochs.close()
    verdict = "identical" if retrained.identical else "DIFFERENT"
    print(
        f"retrained trial {trial.number} with seed {retrained.seed}: {metric} "
        f"{retrained.retrained!r} (recorded {retrained.recorded!r}): {verdict}"
    )
    if not retrained.identical:
        print(
            f"hpo best: REPRODUCIBILITY BUG: trial {trial.number} retrained to {metric} "
            f"{retrained.retrained!r}, but the study recorded {retrained.recorded!r} with the "
            "same parameters and seed; the test split was not used",
            file=sys.stderr,
        )
        return None
    if retrained.refit is not None:
        n = len(retrained.splits.t_train) + len(retrained.splits.t_val)
        print(
            f"refit: trained again on the whole search pool ({n} samples: training and "
            "validation) with the same parameters and seed; this is the model tested"
        )
    return retrained


def _publish(
    args: argparse.Namespace,
    client: TrackingClient,
    tracking: TrackingSettings,
    settings: StorageSettings,
    spec: StudySpec,
    study: optuna.Study,
    retrained: Retrained,
    test: HeldOutResult,
) -> int:
    """Everything MLflow gets; results are printed already, so a failure here is one line."""
    from hpo.analysis.best import publish
    from hpo.errors import ConfigError
    from hpo.tracking.best_model import register_model
    from hpo.tracking.runs import ensure_parent_run

    # Saving copies the network through MLflow's artifact download, with a progress bar.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    step = "logging the model"
    try:
        parent = ensure_parent_run(client, tracking, settings, spec, study)
        model_uri = publish(client, parent, retrained, test)
        print(f"MLflow ({tracking.describe()}), parent run {parent.run_id}: test_acc, test_loss")
        print(f"  model: {model_uri}")
        if args.register is not None:
            step = f"registering the model as {args.register!r}"
            number = retrained.trial.number
            version = register_model(client, args.register, parent, trial_number=number)
            print(f"  registered: {args.register!r} version {version.version}")
    except ConfigError:
        raise
    except Exception as error:
        reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        print(
            f"hpo best: MLflow at {tracking.describe()} failed while {step}: {reason}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _run_id_text(
    client: TrackingClient | None,
    tracking: TrackingSettings,
    study: optuna.Study,
    trial: FrozenTrial,
) -> str:
    from hpo.tracking.lookup import find_run_id
    from hpo.tracking.runs import RUN_ID_ATTR

    if client is None:
        return str(trial.user_attrs.get(RUN_ID_ATTR, "not looked up (--no-mlflow)"))
    try:
        run_id = find_run_id(client, tracking, study, trial)
    except Exception as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        return f"unknown (MLflow at {tracking.describe()} failed: {reason})"
    return run_id or f"none in {tracking.describe()} (not mirrored there)"


def add_parsers(commands: Commands) -> None:
    _add_best_parser(commands)
