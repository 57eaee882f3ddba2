"""Training settings: one frozen dataclass, whose defaults are conf/train/default.yaml's."""

from __future__ import annotations

from dataclasses import dataclass


class NonFiniteLossError(FloatingPointError):
    """The loss became nan/inf; the run stops and its last good checkpoint is kept."""


class TrainingStopped(RuntimeError):
    """SIGTERM or SIGINT (a scheduler's time limit, a preemption, Ctrl-C) stopped training after
    a checkpoint of the step it had reached; the same command resumes it from there."""

    def __init__(self, step: int, signal_name: str) -> None:
        super().__init__(
            f"training stopped by {signal_name} at step {step}, after saving a checkpoint of "
            "that step; run the same command again to resume"
        )
        self.step, self.signal_name = step, signal_name


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are conf/train/default.yaml's (tests/test_config.py keeps them equal)."""

    steps: int = 1200
    batch_size: int = 128
    lr: float = 0.002
    lr_schedule: str = "cosine"  # constant | cosine | wsd (both decay to lr_end_factor * lr)
    lr_end_factor: float = 0.1
    # wsd (warmup-stable-decay): constant after warm-up, then a decay over the last
    # lr_decay_steps steps of `steps` (a cool-down; it can branch off a constant-lr run).
    lr_decay_steps: int = 0
    # wsd: the decay's shape, linear or sqrt (lr * (1 - sqrt(t / lr_decay_steps)), the "1-sqrt"
    # cool-down of Hägele et al. 2024), both from lr to lr_end_factor * lr.
    lr_decay_shape: str = "linear"
    warmup_steps: int = 100
    weight_decay: float = 0.0  # > 0 switches Adam to AdamW
    clip_norm: float = 1.0
    kl_schedule: str = "linear"  # constant | linear | cyclical
    kl_max: float = 0.5  # the KL weight beta reached by the schedule
    kl_start: float = 0.0
    kl_warmup_steps: int = 600  # linear: steps from kl_start to kl_max
    kl_cycles: int = 4  # cyclical (Fu et al. 2019): number of cycles over `steps`
    kl_ratio: float = 0.5  # cyclical: fraction of each cycle spent increasing beta
    free_bits: float = 0.0  # nats per latent dimension below which KL is not penalised
    # Stop (with a checkpoint) once the run has used this much process CPU time, summed over
    # resumes; 0 = no limit. Quality studies compare arms at equal CPU time with it.
    cpu_budget_s: float = 0.0
    # Wall seconds this process may train (compilation, validations and checkpoints counted);
    # 0 = no limit. The run stops with a checkpoint when they are spent. With lr_schedule wsd the
    # run is also planned to fit: after a few hundred timed steps, train.steps is cut to the steps
    # the measured rate fits in what is left (never raised), and the cool-down (lr_decay_steps)
    # and the grammar-masked tail (steps - grammar_from_step) keep their shares of the run. A
    # resumed run keeps the plan its checkpoint holds.
    time_budget_s: float = 0.0
    eval_every: int = 400
    eval_size: int = 1000
    log_every: int = 50
    ckpt_every: int = 400
    keep_checkpoints: int = 2
    seed: int = 0
    progress: bool = True
    param_sharding: str = "replicated"  # replicated | fsdp (large arrays split over devices)
    # Joint training (Gomez-Bombarelli et al. 2018): an MLP on the latent means predicts these
    # properties and its loss, times property_weight, is added to the ELBO. 0 switches it off.
    property_weight: float = 0.0
    property_targets: tuple[str, ...] = ("qed", "logp", "sa")
    property_hidden: tuple[int, ...] = (128, 128)
    property_models: int = 1  # ensemble members of the jointly trained predictor
    # Branch a new run folder off another run's checkpoint (its parameters, optimizer state, step
    # and CPU time; init_step 0: its latest), e.g. to cool down a constant-lr run with wsd. Used
    # only while the new folder has no checkpoint of its own; the vocabulary is the parent's.
    init_from: str = ""
    init_step: int = 0
    # With model.grammar: train on the unmasked likelihood before this step and under the grammar
    # mask from it on (0: masked from the first step). The best recipe measured masks only the
    # cool-down: grammar_from_step = steps - lr_decay_steps (README: Sample quality).
    grammar_from_step: int = 0

    def __post_init__(self) -> None:
        # Hydra hands lists; keep the config hashable and comparable.
        object.__setattr__(self, "property_targets", tuple(self.property_targets))
        object.__setattr__(self, "property_hidden", tuple(int(h) for h in self.property_hidden))
        if self.property_weight < 0:
            raise ValueError(f"train.property_weight must be >= 0, got {self.property_weight}")
        if self.property_weight > 0 and not self.property_targets:
            raise ValueError("train.property_targets is empty but train.property_weight > 0")
        if self.property_models < 1 or any(h < 1 for h in self.property_hidden):
            raise ValueError("train.property_models and train.property_hidden must be positive")
        for name in (
            "steps",
            "batch_size",
            "log_every",
            "eval_every",
            "ckpt_every",
            "keep_checkpoints",
            "eval_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be positive, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine", "wsd"):
            raise ValueError(
                f"train.lr_schedule must be constant, cosine or wsd: {self.lr_schedule!r}"
            )
        if self.lr_schedule == "wsd" and not 0 < self.lr_decay_steps <= self.steps:
            raise ValueError(
                f"train.lr_schedule wsd needs 0 < train.lr_decay_steps <= train.steps, got "
                f"{self.lr_decay_steps} and {self.steps}"
            )
        if self.lr_decay_shape not in ("linear", "sqrt"):
            raise ValueError(
                f"train.lr_decay_shape must be linear or sqrt: {self.lr_decay_shape!r}"
            )
        if not 0 <= self.lr_end_factor <= 1:
            raise ValueError(f"train.lr_end_factor must be in [0, 1], got {self.lr_end_factor}")
        if self.init_step < 0:
            raise ValueError(f"train.init_step must be >= 0, got {self.init_step}")
        if self.grammar_from_step < 0:
            raise ValueError(f"train.grammar_from_step must be >= 0, got {self.grammar_from_step}")
        if self.kl_schedule not in ("constant", "linear", "cyclical"):
            raise ValueError(
                f"train.kl_schedule must be constant, linear or cyclical: {self.kl_schedule!r}"
            )
        if self.kl_max < 0 or self.free_bits < 0:
            raise ValueError("train.kl_max and train.free_bits must be >= 0")
        if self.cpu_budget_s < 0:
            raise ValueError(f"train.cpu_budget_s must be >= 0, got {self.cpu_budget_s}")
        if self.time_budget_s < 0:
            raise ValueError(f"train.time_budget_s must be >= 0, got {self.time_budget_s}")
        if self.param_sharding not in ("replicated", "fsdp"):
            raise ValueError(
                f"train.param_sharding must be replicated or fsdp: {self.param_sharding!r}"
            )
        if not 0 < self.kl_ratio <= 1:
            raise ValueError(f"train.kl_ratio must be in (0, 1], got {self.kl_ratio}")
