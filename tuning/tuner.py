"""Start or join Ray, and build the search: the searcher, the scheduler and the `Tuner`.

FIFO and ASHA take Optuna's TPE as searcher (it is told each trial's best-so-far value, and trials ASHA stops
are pruned: `tuning.ray_compat.optuna_search_class`). BOHB is Ray's `TuneBOHB` searcher with its
`HyperBandForBOHB` scheduler (the two work only together). PBT samples its population at random (Tune's
`BasicVariantGenerator`) and then copies and perturbs it (`PopulationBasedTraining`).

The searchers see list choices as their JSON text (`tuning.trial_config`); this is the one place that decodes them:
a trial's config, and so params.json, results.json, best_config.yaml, the report and TensorBoard, holds the
plain values (`hidden_dims: [600]`, not "[600]").

Importing this module imports Ray: `tuning.run` imports it only after deciding how Ray binds (a local Ray
must see RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 at import to keep every connection on 127.0.0.1).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandForBOHB, PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from multivae.errors import UserError
from multivae.training import TrainConfig
from tuning import experiment, ray_compat, trainable
from tuning.progress import NoTuneTensorBoard, ProgressLine, trial_dirname
from tuning.resources import node_capacity, placement_problem
from tuning.space import SearchSpace, fixed_config
from tuning.trial_config import decode_value, plain_config


def start_ray(address: str | None, num_cpus: int | None, quiet: bool) -> bool:
    """Start a local Ray on 127.0.0.1, or join the cluster at `address`; False when this process already
    runs Ray (it is then left running)."""
    if ray.is_initialized():
        return False
    if quiet:   # Ray's and Tune's INFO and WARNING lines (start-up, token auth, result files) stay out of the console
        for name in ("ray", "ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.ERROR)
    level = {"logging_level": logging.ERROR} if quiet else {}
    if address:
        try:
            ray.init(address=address, log_to_driver=not quiet, **level)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            hint = "" if os.environ.get("RAY_AUTH_MODE") else "; a cluster with token authentication needs RAY_AUTH_MODE=token"
            raise UserError(f"cannot join the Ray cluster at {address} ({str(exc).splitlines()[0][:200]}{hint})") from None
    else:
        # address="local": a new Ray of our own, never one that `ray start` left running on this machine
        ray_compat.ray_processes_in_their_own_session()   # a SIGTERM to our process group: ours alone
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=not quiet, **level)
    return True


def check_cluster_resources(space: SearchSpace) -> None:
    """Refuse trials the joined cluster can never place."""
    from tuning.space import validate_resources

    resources = ray.cluster_resources()
    validate_resources(space, resources.get("GPU", 0))
    if space.resources.cpus_per_trial > resources.get("CPU", 0):
        raise UserError(f"cpus_per_trial={space.resources.cpus_per_trial:g} but the Ray cluster has {resources.get('CPU', 0):g} CPUs")
    # a trial is one actor on one node: the cluster's sum is not enough, one node must hold it
    problem = placement_problem(space.resources.cpus_per_trial, space.resources.gpus_per_trial, node_capacity(ray.nodes()))
    if problem is not None:
        raise UserError(f"{space.source}: resources: {problem}")


def open_optuna_storage(url: str, study_name: str, *, overwrite: bool):
    """Open the RDB storage and check the study name is free (or may be replaced); `create_study` makes the
    study later, when the search really starts."""
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as exc:  # noqa: BLE001 - bad URL, missing driver, unreachable database
        raise UserError(f"--optuna-storage {url}: cannot open it ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})") from None
    if study_name in {s.study_name for s in storage.get_all_studies()} and not overwrite:
        raise UserError(f"--optuna-storage {url}: a study named {study_name!r} exists already; pass --overwrite to replace it")
    return storage


def create_study(storage, study_name: str, mode: str) -> None:
    """Create (replacing one of that name) the study that OptunaSearch then loads and fills, so
    optuna-dashboard can follow the search: `optuna-dashboard sqlite:///study.db`."""
    if study_name in {s.study_name for s in storage.get_all_studies()}:
        optuna.delete_study(study_name=study_name, storage=storage)
    optuna.create_study(storage=storage, study_name=study_name, direction="maximize" if mode == "max" else "minimize")


def _trainable(space: SearchSpace, split):
    # looked up on the module when called, so a wrapper set there (the benches, the cluster tests) is used
    sched = space.scheduler
    epochs = sched.max_t or int(space.fixed.get("epochs", TrainConfig.epochs))   # epochs cannot be searched with pbt
    return tune.with_resources(
        tune.with_parameters(trainable.train_multivae, split=split, checkpoint_every=space.checkpoint.every,
                             checkpoint_epochs=tuple(sched.decision_epochs(epochs)), searched=tuple(space.params)),
        {"cpu": space.resources.cpus_per_trial, "gpu": space.resources.gpus_per_trial})


def plain_trial_config(config: dict[str, Any]) -> dict[str, Any]:
    """A searcher's suggestion as a trial's config: numpy scalars as Python values, list choices as lists."""
    return {k: decode_value(k, v) for k, v in plain_config(config).items()}


def rebuild_search_alg(kind: str, state: dict) -> Any:
    """The search algorithm `kind` with this saved instance state, on the class of this version: what Tune's
    pickled state (tuner.pkl) refers to instead of the classes below, so they can be renamed or moved (a name kept
    stable, like `tuning.progress.rebuild`; changing it raises `tuning.experiment.FORMAT_VERSION`)."""
    cls = {"plain_configs": PlainConfigs, "plain_variants": PlainVariants}[kind]
    alg = cls.__new__(cls)
    alg.__dict__.update(state)
    return alg


class PlainConfigs(ConcurrencyLimiter):
    """Ray's ConcurrencyLimiter around Optuna or TuneBOHB, handing Tune each suggestion with plain values."""

    def __reduce__(self):
        return rebuild_search_alg, ("plain_configs", self.__dict__.copy())

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        return plain_trial_config(config) if isinstance(config, dict) else config


class PlainVariants(BasicVariantGenerator):
    """Tune's random sampler (PBT's population), handing Tune each new trial with plain values. It samples the
    JSON text of list choices: Tune cannot take a list in `points_to_evaluate`."""

    def __reduce__(self):
        return rebuild_search_alg, ("plain_variants", self.__dict__.copy())

    def next_trial(self):
        trial = super().next_trial()
        if trial is not None:
            trial.set_config(plain_trial_config(trial.config))
        return trial


def tune_domain(dist: Any):
    """An Optuna distribution as Tune's search-space object (what TuneBOHB converts to ConfigSpace and what
    PBT samples and resamples from). Tune's integer upper bounds are exclusive."""
    od = optuna.distributions
    if isinstance(dist, od.CategoricalDistribution):
        return tune.choice(list(dist.choices))
    if isinstance(dist, od.IntDistribution):
        if dist.log:
            return tune.lograndint(dist.low, dist.high + 1)
        return tune.qrandint(dist.low, dist.high, dist.step) if dist.step != 1 else tune.randint(dist.low, dist.high + 1)
    return tune.loguniform(dist.low, dist.high) if dist.log else tune.uniform(dist.low, dist.high)


def clip_to_space(space: SearchSpace):
    """PBT's explore multiplies a value by 0.8 or 1.2 without looking at its range: put it back inside the
    searched range (a dropout of 0.96 or an anneal cap above the range would otherwise be trained)."""
    bounds = {k: (d.low, d.high) for k, d in space.params.items() if k in (space.scheduler.mutations or ())
              and not isinstance(d, optuna.distributions.CategoricalDistribution)}

    def clip(config: dict) -> dict:
        for key, (low, high) in bounds.items():
            if key in config:
                config[key] = type(config[key])(min(high, max(low, config[key])))
        return config
    return clip


def _scheduler(space: SearchSpace):
    search, sched = space.search, space.scheduler
    common = {"time_attr": "epoch", "metric": search.metric, "mode": search.mode}
    if sched.type == "asha":
        return ASHAScheduler(**common, max_t=sched.max_t, grace_period=sched.grace_period, reduction_factor=sched.reduction_factor)
    if sched.type == "bohb":
        return HyperBandForBOHB(**common, max_t=sched.max_t, reduction_factor=sched.reduction_factor)
    if sched.type == "pbt":
        return PopulationBasedTraining(
            **common, perturbation_interval=sched.perturbation_interval, quantile_fraction=sched.quantile_fraction,
            resample_probability=sched.resample_probability,
            hyperparam_mutations={k: tune_domain(space.params[k]) for k in sched.mutations},
            custom_explore_fn=clip_to_space(space))
    return FIFOScheduler()


def _searcher(space: SearchSpace, name: str, optuna_storage: Any):
    search, sched = space.search, space.scheduler
    points = [dict(p) for p in search.points_to_evaluate] or None
    if sched.type == "pbt":
        # the whole population at once (max_concurrent 0), as PBT expects: Ray's CPUs decide how many train at
        # a time; the others wait, paused or pending.
        return PlainVariants(points_to_evaluate=points, max_concurrent=0, random_state=search.seed)
    if sched.type == "bohb":
        from ray.tune.search.bohb import TuneBOHB

        try:
            searcher = TuneBOHB(space={k: tune_domain(d) for k, d in space.params.items()}, metric=search.metric,
                                mode=search.mode, points_to_evaluate=points, seed=search.seed)
        except AssertionError as exc:   # TuneBOHB asserts that hpbandster and ConfigSpace import
            raise UserError(f"scheduler.type bohb needs hpbandster and ConfigSpace: {exc}".splitlines()[0]) from None
        return PlainConfigs(searcher, max_concurrent=search.max_concurrent)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = {"storage": optuna_storage, "study_name": name} if optuna_storage is not None else {}
    searcher = ray_compat.optuna_search_class()(
        space=dict(space.params), metric=search.metric, mode=search.mode, objective=search.objective,
        planned_epochs=sched.max_t if sched.stops_early else None, sampler=optuna.samplers.TPESampler(seed=search.seed),
        points_to_evaluate=points, **study)
    return PlainConfigs(searcher, max_concurrent=search.max_concurrent)


def param_space(space: SearchSpace) -> dict[str, Any]:
    """Tune's `param_space`: the fixed values, plus the searched ones as Tune domains where the searcher
    samples from it (PBT's random sampling: the searcher-space values, which `PlainVariants` decodes); Optuna
    and TuneBOHB hold their own space, and Tune adds their decoded suggestions to the plain fixed values."""
    fixed = fixed_config(space)
    if space.scheduler.type == "pbt":
        return {**fixed, **{k: tune_domain(d) for k, d in space.params.items()}}
    return plain_trial_config(fixed)


def new_tuner(space: SearchSpace, split, *, name: str, root: str, max_failures: int, quiet: bool,
              callbacks: Sequence[Any] = (), optuna_storage: Any = None) -> tune.Tuner:
    """The Tuner of a new experiment `<root>/<name>`."""
    search, sched = space.search, space.scheduler
    search_alg = _searcher(space, name, optuna_storage)
    progress = [] if quiet else [ProgressLine(search.metric, sched.max_t if sched.stops_early else None, search.num_samples)]
    run_config = tune.RunConfig(
        name=name, storage_path=root, verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=space.checkpoint.keep),   # the latest ones
        failure_config=tune.FailureConfig(max_failures=max_failures),
        sync_config=tune.SyncConfig(sync_artifacts=True),   # uploads the trials' TensorBoard runs (tuning.trainable)
        callbacks=[NoTuneTensorBoard(), *progress, *callbacks])
    # reuse_actors (on by default, off with pbt): a worker that finished a trial starts the next one (Tune resets
    # the function trainable with the new config; `train_multivae` builds all its state from that config and a
    # restored trial goes on from its newest own checkpoint) instead of a new process that imports torch and Ray
    # again. search_spaces/README.md says why pbt keeps it off.
    tune_config = tune.TuneConfig(search_alg=search_alg, scheduler=_scheduler(space), num_samples=search.num_samples,
                                  trial_dirname_creator=trial_dirname, reuse_actors=space.resources.reuse_actors)
    return tune.Tuner(_trainable(space, split), param_space=param_space(space), tune_config=tune_config, run_config=run_config)


def restored_tuner(space: SearchSpace, split, exp_path: str, *, retry_errored: bool) -> tune.Tuner:
    """The Tuner of an interrupted experiment: the searcher (with its Optuna study), the scheduler, the run
    config and the trials come back from the experiment folder; only the trainable (and with it the dataset)
    is given again. ASHA's rungs, which Ray does not save, are rebuilt from the trials' results."""
    try:
        # the space's fixed settings (and PBT's domains) given again: no trial runs without them
        tuner = tune.Tuner.restore(exp_path, trainable=_trainable(space, split), resume_errored=retry_errored,
                                   param_space=param_space(space))
    except (ValueError, KeyError, TypeError, EOFError, OSError) as exc:   # a damaged tuner.pkl or experiment state
        raise UserError(f"{exp_path}: Tune's saved state of this experiment cannot be read ({exc.__class__.__name__}: "
                        f"{str(exc).splitlines()[0][:100] if str(exc) else ''}); its trials' results are still there: "
                        f"`python -m tuning.report {exp_path}` lists them, `--resume --finalize` tests the best") from None
    if space.scheduler.type == "asha":
        rows = {}
        for d in experiment.list_dirs(exp_path):
            path = experiment.join(d, experiment.TRIAL_RESULTS)
            if experiment.exists(path):
                for row in experiment.parse_result_rows(experiment.read_text(path)):
                    if row.get("trial_id"):
                        rows.setdefault(str(row["trial_id"]), []).append(row)
        scheduler = ray_compat.restored_scheduler(tuner)
        if scheduler is not None:
            ray_compat.refill_asha_rungs(scheduler, rows, space.search.metric, space.search.mode, space.scheduler.max_t)
    return tuner


__all__ = ["PlainConfigs", "PlainVariants", "check_cluster_resources", "rebuild_search_alg", "clip_to_space", "create_study", "new_tuner", "open_optuna_storage", "param_space",
           "plain_trial_config", "restored_tuner", "start_ray", "tune_domain"]
