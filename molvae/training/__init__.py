"""Training: settings, schedules, batches, jitted steps, joint predictor, the loop."""

from molvae.training.batches import Batches, bucket_width
from molvae.training.config import NonFiniteLossError, TrainConfig, TrainingStopped
from molvae.training.loop import TrainResult, train, train_and_evaluate
from molvae.training.schedules import kl_weight, lr_schedule, make_tx
from molvae.training.steps import make_eval_step, make_joint_train_step, make_train_step

__all__ = [
    "Batches",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "TrainingStopped",
    "bucket_width",
    "kl_weight",
    "lr_schedule",
    "make_eval_step",
    "make_joint_train_step",
    "make_train_step",
    "make_tx",
    "train",
    "train_and_evaluate",
]
