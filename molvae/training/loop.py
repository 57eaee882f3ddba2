"""The training loop: build or resume the state, step, log, validate, checkpoint; and
train_and_evaluate, which turns a data config into a run folder and trains it."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from molvae import chem, runtime
from molvae import data as data_mod
from molvae.distributed import state_sharding
from molvae.loggers import Logger, truncate_jsonl
from molvae.models import grammar as gram
from molvae.models.vae import VAE, ModelConfig
from molvae.store import checkpoints as ckpts
from molvae.store import folder
from molvae.store.checkpoints import CheckpointError
from molvae.store.locate import pretrained_name, run_folder
from molvae.store.names import CHECKPOINTS, METRICS_JSONL, PARAMS_NPZ, RUN_FORMAT, VOCAB_JSON
from molvae.store.params import load_npz
from molvae.training import joint
from molvae.training.batches import Batches
from molvae.training.config import NonFiniteLossError, TrainConfig, TrainingStopped
from molvae.training.schedules import lr_schedule, make_tx
from molvae.training.steps import (
    evaluate_split,
    make_eval_step,
    make_joint_train_step,
    make_train_step,
)
from molvae.vocab import UnknownSymbolError, Vocab

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: VAE
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    final_eval: dict[str, float] = field(default_factory=dict)
    predictor: Any = None  # the jointly trained Predictor (train.property_weight > 0)


class _StopSignal:
    """While training, SIGTERM or SIGINT is noted instead of killing the process: the loop then
    checkpoints the step it has reached and raises TrainingStopped, so a scheduler's time limit,
    a preemption or Ctrl-C loses no training. The first signal restores the previous handlers
    (a second Ctrl-C interrupts at once). Installed from the main thread only."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._note) for s in self.SIGNALS}
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def __exit__(self, *exc: object) -> None:
        self._restore()


class _Clock:
    """Process CPU seconds of this run, summed with those of earlier runs of the same folder
    (all threads: the run's compute, not wall time), and wall time for throughput."""

    def __init__(self, cpu_before: float) -> None:
        self.cpu_before, self.cpu0 = cpu_before, time.process_time()
        self.t0 = self.t_last = time.perf_counter()
        self.n_last = 0  # molecules since the last record

    def cpu_s(self) -> float:
        return self.cpu_before + time.process_time() - self.cpu0

    def throughput(self) -> tuple[float, float]:
        """(molecules per wall second since the last call, wall seconds since the start)."""
        now = time.perf_counter()
        rate = self.n_last / max(now - self.t_last, 1e-9)
        self.t_last, self.n_last = now, 0
        return rate, now - self.t0


def _initial_state(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    y_train: np.ndarray | None,
    params_from: Path | None = None,
):
    """(graphdef, state, model): the model and its optimizer, plus, for joint training, the
    predictor and its optimizer, split once so the jitted step takes plain state.
    params_from: a params.npz whose values replace the fresh parameters (a fine-tune)."""
    model = VAE(model_cfg, rngs=nnx.Rngs(cfg.seed))
    if params_from is not None:
        load_npz(model, params_from)
    opt = nnx.Optimizer(model, make_tx(cfg), wrt=nnx.Param)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    log.info("model: %s parameters, %s", f"{n_params:,}", model_cfg)
    if advice := runtime.dtype_advice(model_cfg.dtype, jax.default_backend()):
        log.warning(advice)
    if y_train is None:
        return (*nnx.split((model, opt)), model)
    pred = joint.joint_predictor(model_cfg, cfg, y_train)
    popt = nnx.Optimizer(pred, make_tx(cfg), wrt=nnx.Param)
    return (*nnx.split((model, opt, pred, popt)), model)


_now = time.perf_counter  # the wall clock of train.time_budget_s (tests substitute their own)


def _synced_time(state) -> float:
    """Wall time once every step dispatched so far has finished."""
    jax.block_until_ready(state)
    return _now()


def _flush(pending: list[dict[str, jax.Array]], step: int) -> dict[str, Any]:
    """Average the step metrics since the last log; stop on a non-finite loss."""
    got = jax.device_get(pending)
    pending.clear()
    losses = np.array([g["loss"] + 0.0 * g["grad_norm"] for g in got])  # nan grads count too
    if not np.all(np.isfinite(losses)):
        bad = step - len(losses) + int(np.argmin(np.isfinite(losses)))
        raise NonFiniteLossError(
            f"non-finite loss at step {bad + 1}; stopping. The last good checkpoint is kept "
            f"(lower train.lr or raise train.clip_norm)"
        )
    rec = {"step": step}
    for k in got[-1]:
        rec[k] = float(np.mean([g[k] for g in got]))
    rec["beta"] = float(got[-1]["beta"])
    return rec


def _check_properties(cfg: TrainConfig, n: int, properties) -> np.ndarray | None:
    """The training molecules' property targets for joint training (None without it)."""
    if cfg.property_weight <= 0:
        return None
    if properties is None:
        raise ValueError("train.property_weight > 0 needs property values for the molecules")
    y_train = np.asarray(properties[0], np.float32)
    if y_train.shape != (n, len(cfg.property_targets)):
        raise ValueError(
            f"properties {y_train.shape} do not match {n} molecules x "
            f"{len(cfg.property_targets)} targets {cfg.property_targets}"
        )
    return y_train


def _parent(init_from: str) -> Path:
    """The folder train.init_from names: a path, or a shipped model's ('pretrained:NAME')."""
    return run_folder(init_from) if pretrained_name(init_from) else Path(init_from)


def _parent_params(cfg: TrainConfig, run_dir: Path) -> Path | None:
    """The params.npz a new run starts from when train.init_from names a model without
    checkpoints (a shipped 'pretrained:NAME' or an exported folder): a fine-tune, which keeps
    the parameters only (fresh optimizer, step 0, this run's own schedule). None otherwise."""
    if not cfg.init_from or ckpts.checkpoint_steps(run_dir):
        return None
    parent = _parent(cfg.init_from)
    if ckpts.checkpoint_steps(parent):
        return None  # a branch: parameters, optimizer, step and metrics (_branch_from)
    if not (parent / PARAMS_NPZ).exists():
        raise CheckpointError(
            f"train.init_from={cfg.init_from}: neither a checkpoint nor {PARAMS_NPZ} there"
        )
    if cfg.init_step:
        raise CheckpointError(
            f"train.init_from={cfg.init_from} holds final parameters only (no checkpoints): "
            f"train.init_step must be 0, got {cfg.init_step}"
        )
    return parent / PARAMS_NPZ


# A timed run (train.time_budget_s with wsd) is planned from the steps timed from the
# PROBE_FROM-th (compilation and the first steps' warm-up excluded) and planned again every
# PROBE_STEPS steps until its cool-down is near: a slower or faster machine moves the plan.
PROBE_FROM, PROBE_STEPS = 20, 300


def plan_to_fit(cfg: TrainConfig, step: int, rate: float, seconds_left: float) -> TrainConfig:
    """`cfg` with train.steps cut to what `rate` steps per second fit in `seconds_left` from
    `step` (never raised, at least step + 1), the cool-down (lr_decay_steps) and the grammar-
    masked tail (steps - grammar_from_step) keeping their shares of the run (a cool-down never
    starting before `step`)."""
    steps = min(cfg.steps, step + max(int(rate * seconds_left), 1))
    if steps == cfg.steps or step >= cfg.steps - cfg.lr_decay_steps:  # or cooling down already
        return cfg
    decay = round(cfg.lr_decay_steps / cfg.steps * steps)
    decay = min(max(decay, 1), steps - step) if cfg.lr_decay_steps else 0  # it starts ahead
    gram = cfg.grammar_from_step
    if gram > step:  # a tail not yet begun keeps its share; one begun stays as it is
        gram = max(steps - round((cfg.steps - gram) / cfg.steps * steps), step + 1)
    return dataclasses.replace(
        cfg, steps=steps, lr_decay_steps=decay, grammar_from_step=min(gram, steps)
    )


class _Planner:
    """Times a run's steps at window ends and plans its length to fit train.time_budget_s."""

    def __init__(self, cfg: TrainConfig, start: int, t_begin: float) -> None:
        self.cfg0, self.start, self.t_begin = cfg, start, t_begin
        self.marks: list[tuple[int, float]] = []  # (step, wall time) at window ends

    def due(self, step: int) -> bool:
        k = step - self.start - PROBE_FROM
        return k >= 0 and k % PROBE_STEPS == 0

    def plan(self, step: int, now: float) -> tuple[TrainConfig, float] | None:
        """(the plan that fits, the rate it assumed), or None before a window was timed. The
        rate is the lower of the whole run's and the last window's (validations and
        checkpoints included); held back: the time to the first mark (compilation: the
        grammar step's will take as long) and a margin of 10%."""
        self.marks.append((step, now))
        if len(self.marks) < 2:
            return None
        (s0, t0), (s1, t1) = self.marks[0], self.marks[-2]
        rate = min((step - s0) / (now - t0), (step - s1) / (now - t1))
        left = 0.9 * (self.cfg0.time_budget_s - (now - self.t_begin) - (t0 - self.t_begin))
        return plan_to_fit(self.cfg0, step, rate, left), rate


def _plan_of(cfg: TrainConfig) -> dict[str, int]:
    return {k: getattr(cfg, k) for k in ("steps", "lr_decay_steps", "grammar_from_step")}


def _with_tx(graphdef, state, cfg: TrainConfig):
    """The graph definition of the training state with optimizers built from `cfg` (the
    schedule is static in it); the state itself is unchanged (same structure)."""
    parts = list(nnx.merge(graphdef, state))
    for i in range(1, len(parts), 2):  # (model, opt) or (model, opt, predictor, predictor_opt)
        parts[i] = nnx.Optimizer(parts[i - 1], make_tx(cfg), wrt=nnx.Param)
    new, new_state = nnx.split(tuple(parts))
    if jax.tree.structure(new_state) != jax.tree.structure(state):
        raise RuntimeError("re-planning the schedule changed the optimizer state's structure")
    return new


def _branch_from(parent: Path, step: int, state, run_dir: Path) -> dict[str, Any]:
    """Fill `state` from `parent`'s checkpoint `step` (0: its latest) and start this run's
    metrics with the parent's up to that step, so the learning curve is continuous."""
    steps = ckpts.checkpoint_steps(parent)
    if not steps:
        raise CheckpointError(f"train.init_from={parent}: no checkpoint there")
    step = step or steps[-1]
    if step not in steps:
        raise CheckpointError(f"train.init_from={parent}: no checkpoint at step {step} ({steps})")
    meta = ckpts.restore_into(ckpts.reader(parent), step, state)  # the parent is only read
    if (parent / METRICS_JSONL).exists():
        shutil.copyfile(parent / METRICS_JSONL, run_dir / METRICS_JSONL)
    log.info("branched from %s at step %d", parent, step)
    return meta


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray],
    run_dir: str | Path,
    logger: Logger,
    extra_meta: dict | None = None,
    properties: tuple[np.ndarray, np.ndarray] | None = None,
    grammar: gram.GrammarTables | None = None,
) -> TrainResult:
    """Train a VAE on token arrays, checkpointing into run_dir and resuming from it if present.

    Joint training (cfg.property_weight > 0) needs `properties`: float arrays (n_train, T) and
    (n_val, T) of cfg.property_targets, nan where unknown. The predictor is saved at the end as
    run_dir/predictor.{json,npz}, where molvae.load and the optimizers find it.
    grammar: the vocabulary's tables (models.grammar), needed iff model_cfg.grammar.
    """
    if model_cfg.grammar != (grammar is not None):
        raise ValueError("model.grammar needs the vocabulary's grammar tables, and only it does")
    if cfg.grammar_from_step and grammar is None:
        raise ValueError("train.grammar_from_step needs model.grammar=true")
    run_dir = Path(run_dir)
    tokens, lengths = train_data
    y_train = _check_properties(cfg, len(tokens), properties)
    max_len = tokens.shape[1] - 2

    # data parallel over every device; a no-op on one device
    mesh = Mesh(np.array(jax.devices()), ("data",))
    if cfg.batch_size % mesh.size:
        raise ValueError(f"train.batch_size {cfg.batch_size} must divide over {mesh.size} devices")
    data_sh = NamedSharding(mesh, P("data"))

    params_from = _parent_params(cfg, run_dir)
    graphdef, state, model = _initial_state(model_cfg, cfg, y_train, params_from)
    mngr = ckpts.checkpoint_manager(run_dir, cfg.keep_checkpoints)
    start, cpu_before = 0, 0.0  # cpu_before: CPU seconds spent by earlier runs of this folder
    branched = False
    planned = not (cfg.time_budget_s and cfg.lr_schedule == "wsd")  # nothing to plan
    plan: dict[str, int] | None = None  # a timed run's plan, saved in its checkpoints
    if (latest := mngr.latest_step()) is not None:
        meta = ckpts.restore_into(mngr, latest, state)
        start, cpu_before = int(meta["step"]), float(meta.get("cpu_s", 0.0))
        log.info("resumed from checkpoint at step %d", start)
        if plan := meta.get("plan"):  # a timed run's plan outlives it
            cfg = dataclasses.replace(cfg, **plan)
            graphdef, planned = _with_tx(graphdef, state, cfg), True
            log.info("keeping the checkpoint's plan: %s", plan)
    elif params_from is not None:
        log.info("fine-tuning the parameters of %s (fresh optimizer, step 0)", cfg.init_from)
    elif cfg.init_from:
        meta = _branch_from(_parent(cfg.init_from), cfg.init_step, state, run_dir)
        start, cpu_before = int(meta["step"]), float(meta.get("cpu_s", 0.0))
        branched = True
    # A resumed run rewrites the metrics logged after its checkpoint; a fresh one starts empty.
    truncate_jsonl(run_dir / METRICS_JSONL, start if latest is not None or branched else -1)
    state = jax.device_put(state, state_sharding(state, mesh, cfg.param_sharding))

    make_step = make_joint_train_step if y_train is not None else make_train_step
    train_step = make_step(graphdef, cfg, grammar, max_len)
    # before train.grammar_from_step, a grammar model trains on the unmasked likelihood
    free_step = make_step(graphdef, cfg, None, max_len) if cfg.grammar_from_step > start else None
    eval_step = make_eval_step(nnx.split(model)[0], max_len, grammar)
    batches = Batches(tokens, lengths, cfg.batch_size, cfg.seed)
    base_key = jax.random.key(cfg.seed + 1)
    eval_bs = min(cfg.batch_size, 512)
    val_t, val_l = val_data[0][: cfg.eval_size], val_data[1][: cfg.eval_size]
    meta_base = {"format": RUN_FORMAT, **(extra_meta or {})}
    clock = _Clock(cpu_before)
    lr = lr_schedule(cfg)
    budget, t_begin = cfg.time_budget_s, _now()
    planner = None if planned else _Planner(cfg, start, t_begin)

    history: list[dict[str, Any]] = []
    pending: list[dict[str, jax.Array]] = []
    bar = tqdm(total=cfg.steps, initial=start, desc="train", disable=not cfg.progress,
               dynamic_ncols=True, mininterval=1.0)  # fmt: skip
    step = start
    with jax.set_mesh(mesh), _StopSignal() as stop:
        while step < cfg.steps:
            t, l_ = batches(step)
            args = [t, l_, np.ones(len(t), np.float32)]
            if y_train is not None:
                args.append(y_train[batches.indices(step)])
            fn = free_step if step < cfg.grammar_from_step else train_step  # None only past it
            state, aux = fn(state, *(jax.device_put(a, data_sh) for a in args), base_key)
            pending.append(aux)
            step += 1
            clock.n_last += len(t)
            bar.update(1)
            if planner is not None and planner.due(step):
                got = planner.plan(step, _synced_time(state))
                if got is not None:
                    new_cfg, rate = got
                    # a free (unmasked) step running a constant rate in both plans is kept, and
                    # the plan stays open; else this plan is final (the running step changes)
                    keep_free = (
                        free_step is not None
                        and step < new_cfg.grammar_from_step
                        and all(
                            c.grammar_from_step <= c.steps - c.lr_decay_steps
                            for c in (cfg, new_cfg)
                        )
                    )
                    near = new_cfg.grammar_from_step, new_cfg.steps - new_cfg.lr_decay_steps
                    final = not keep_free or min(near) <= step + PROBE_STEPS
                    if new_cfg != cfg:
                        cfg, graphdef = new_cfg, _with_tx(graphdef, state, new_cfg)
                        train_step = make_step(graphdef, cfg, grammar, max_len)  # compiled on use
                        if free_step is not None and not keep_free:
                            free_step = make_step(graphdef, cfg, None, max_len)
                        lr, bar.total = lr_schedule(cfg), cfg.steps
                        bar.refresh()
                    (log.info if plan is None or final else log.debug)(
                        "train.time_budget_s %.0f: %.2f steps/s at step %d, %s plan: %s",
                        budget, rate, step, "final" if final else "open", _plan_of(cfg),
                    )  # fmt: skip
                    plan = _plan_of(cfg)
                    if final:
                        planner = None
            out_of_cpu = bool(cfg.cpu_budget_s) and clock.cpu_s() >= cfg.cpu_budget_s
            out_of_time = bool(budget) and _now() - t_begin >= budget
            stopped = stop.signum is not None
            last = step == cfg.steps or out_of_cpu or out_of_time or stopped
            is_ckpt = step % cfg.ckpt_every == 0 or last
            if step % cfg.log_every == 0 or is_ckpt or step % cfg.eval_every == 0:
                rec = _flush(pending, step)
                rec["mol_per_s"], rec["time"] = clock.throughput()
                rec["lr"] = float(lr(step))
                rec["cpu_s"], rec["mols_seen"] = clock.cpu_s(), step * cfg.batch_size
                if step % cfg.eval_every == 0 or (last and not stopped):  # stop quickly
                    rec.update(evaluate_split(eval_step, state[0], val_t, val_l, eval_bs))
                logger.log(rec)
                history.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", kl=f"{rec['kl']:.2f}",
                                mol_s=f"{rec['mol_per_s']:.0f}")  # fmt: skip
                if is_ckpt:
                    meta = {"step": step, "cpu_s": rec["cpu_s"], "mols_seen": rec["mols_seen"]}
                    if plan is not None:
                        meta["plan"] = plan
                    ckpts.save_checkpoint(mngr, step, state, {**meta_base, **meta})
            if stopped:
                bar.close()
                err = TrainingStopped(step, signal.Signals(stop.signum).name)
                log.warning("%s", err)
                raise err
            if out_of_cpu:
                log.info("train.cpu_budget_s %.0f reached at step %d", cfg.cpu_budget_s, step)
                break
            if out_of_time:
                log.info("train.time_budget_s %.0f reached at step %d of %d", budget, step,
                         cfg.steps)  # fmt: skip
                break
    bar.close()
    model, _, *joint_parts = nnx.merge(graphdef, jax.device_get(state))
    final = {k: v for k, v in history[-1].items() if k.startswith("val_")} if history else {}
    pred = None
    if y_train is not None:
        pred = joint_parts[0]
        y_val = np.asarray(properties[1], np.float32)[: cfg.eval_size]
        scores = joint.save_joint_predictor(model, pred, (val_t, val_l), y_val, cfg, run_dir)
        final.update(scores)
        logger.log({"step": step, **scores})
    if start >= cfg.steps:  # a finished run started again: nothing was trained
        final = {**folder.last_validation(run_dir / METRICS_JSONL), **final}
    rounded = json.dumps({k: round(v, 4) for k, v in final.items()})
    if start >= cfg.steps:
        log.info("run already complete at step %d (train.steps=%d); final validation: %s",
                 step, cfg.steps, rounded)  # fmt: skip
    else:
        log.info("trained to step %d in %.1f s; %s", step, clock.throughput()[1], rounded)
    return TrainResult(model=model, step=step, history=history, final_eval=final, predictor=pred)


# ----------------------------------------------------------------------------- data -> run


def train_and_evaluate(
    data_cfg: data_mod.DataConfig,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    run_dir: str | Path,
    logger: Logger,
    config: dict[str, Any] | None = None,
) -> TrainResult:
    """Load and preprocess data, fit (or reload) the vocabulary, write run.json, train (with
    validation on the test split: hence the name)."""
    run_dir = Path(run_dir)
    if cfg.property_weight > 0:  # fail before the data work starts
        known = set(chem.PROPERTIES) | set(data_cfg.property_columns)
        if unknown := [t for t in cfg.property_targets if t not in known]:
            raise ValueError(
                f"train.property_targets {unknown}: not a data property column "
                f"{list(data_cfg.property_columns)} nor a known property "
                f"{sorted(chem.PROPERTIES)}"
            )
    if model_cfg.max_ring and not 0 < data_cfg.max_ring <= model_cfg.max_ring:
        raise ValueError(
            f"model.max_ring={model_cfg.max_ring} trains under a ring-size mask, which "
            "5-7% of canonical MOSES strings break: write the data small-ring-first with "
            f"data.max_ring={model_cfg.max_ring} (got data.max_ring={data_cfg.max_ring})"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    ds = data_mod.load_dataset(data_cfg)
    data_mod.write_report(ds, run_dir)
    vocab_path = run_dir / VOCAB_JSON
    resuming = vocab_path.exists() and (run_dir / CHECKPOINTS).exists()
    branch = bool(cfg.init_from) and not ckpts.checkpoint_steps(run_dir)
    if branch:  # a branch or a fine-tune: the parent's vocabulary
        parent = _parent(cfg.init_from)
        if not (parent / VOCAB_JSON).exists():
            raise CheckpointError(f"train.init_from={parent} is not a run folder (no {VOCAB_JSON})")
        vocab_path, resuming = parent / VOCAB_JSON, True
    vocab = (
        Vocab.load(vocab_path)
        if resuming
        else Vocab.fit(ds.train.selfies, bpe_merges=data_cfg.bpe_merges)
    )
    max_len = data_cfg.max_len

    def encodable(split: str) -> tuple[list[int], list[int]]:
        """Rows of a split the vocabulary can encode, and those it cannot (unknown symbols)."""
        part = getattr(ds, split)
        ok, bad = [], []
        for i, (s, m) in enumerate(zip(part.selfies, part.smiles, strict=True)):
            try:
                vocab.encode(s, m)
                ok.append(i)
            except UnknownSymbolError:
                bad.append(i)
        return ok, bad

    # A vocabulary fitted here covers every training molecule; a parent's (a fine-tune on other
    # data) may not: those molecules are skipped and listed in the report, like test ones.
    train_rows: list[int] | slice = slice(None)  # every one, unless some are skipped
    skipped: dict[str, list[int]] = {}
    try:
        train_arr = vocab.encode_batch(ds.train.selfies, max_len, ds.train.smiles)
    except UnknownSymbolError:
        if not resuming:  # cannot happen: the vocabulary was fitted on these molecules
            raise
        train_rows, skipped["train"] = encodable("train")
        if not train_rows:
            raise ValueError(
                f"none of the {len(ds.train)} training molecules can be written in the "
                f"vocabulary of {vocab_path.parent} (train.init_from): every one holds a symbol "
                "it lacks"
            ) from None
        train_arr = vocab.encode_batch(
            [ds.train.selfies[i] for i in train_rows],
            max_len,
            [ds.train.smiles[i] for i in train_rows],
        )
    try:  # the whole split at once (fast); molecule by molecule only if some cannot be encoded
        val_arr = vocab.encode_batch(ds.test.selfies, max_len)
        keep_rows, skipped["test"] = list(range(len(ds.test))), []
    except UnknownSymbolError:
        keep_rows, skipped["test"] = encodable("test")
        val_arr = vocab.encode_batch([ds.test.selfies[i] for i in keep_rows], max_len)
    if any(skipped.values()):
        unknown = pd.concat(
            [data_mod.report_rows(ds, split, rows, "unknown_symbol")
             for split, rows in skipped.items() if rows],
            ignore_index=True,
        )  # fmt: skip
        data_mod.write_report(ds, run_dir, unknown)
        for split, rows in skipped.items():
            if rows:
                log.warning(
                    "%d %s molecules have symbols outside the %s vocabulary; skipped, listed "
                    "in %s (reason unknown_symbol)",
                    len(rows),
                    split,
                    "training" if not resuming else "run's",
                    run_dir / "data_report.csv",
                )
    model_cfg = dataclasses.replace(model_cfg, vocab_size=len(vocab))
    if resuming:
        old_cfg, *_ = folder.read_run_info(vocab_path.parent)
        if vocab_path.parent != run_dir:  # a branch may switch grammar-constrained decoding on
            old_cfg = dataclasses.replace(
                old_cfg, grammar=model_cfg.grammar, max_ring=model_cfg.max_ring
            )
        if old_cfg != model_cfg:
            raise CheckpointError(
                f"{vocab_path.parent} holds a run of another model ({old_cfg}); use a new run "
                "folder" + (" or a matching model config" if vocab_path.parent != run_dir else "")
            )
    folder.write_run_info(run_dir, model_cfg, vocab, max_len, config or {})
    log.info(
        "data: %d train / %d validation molecules, vocabulary of %d symbols, max_len %d",
        len(train_arr[0]),
        len(val_arr[0]),
        len(vocab),
        max_len,
    )
    props = None
    if cfg.property_weight > 0:
        val_rows = keep_rows[: cfg.eval_size]
        props = (
            joint.property_table(ds.train, cfg.property_targets)[train_rows],
            joint.property_table(ds.test, cfg.property_targets)[val_rows],
        )
    grammar = (
        gram.grammar_tables(vocab.tokens, vocab.eos_id, model_cfg.max_ring)
        if model_cfg.grammar
        else None
    )
    return train(
        model_cfg, cfg, train_arr, val_arr, run_dir, logger, properties=props, grammar=grammar
    )
