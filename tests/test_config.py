"""One source of defaults: every default YAML of conf/ equals its dataclass, key for key."""

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from molvae.data import DataConfig
from molvae.design.registry import METHODS
from molvae.models.vae import ModelConfig
from molvae.training import TrainConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
# Keys a YAML group carries for the scripts, not for its dataclass.
SCRIPT_KEYS = {"data": {"reference"}, "optimize": {"method", "budget"}}


def _compose(name: str, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(name, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        v = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _agree(group: str, yaml: dict, cls) -> None:
    yaml = {k: v for k, v in yaml.items() if k not in SCRIPT_KEYS.get(group, set())}
    want = _defaults(cls)
    want.pop("vocab_size", None)  # set from the vocabulary, never configured
    assert set(yaml) == set(want), (
        f"{group}: only in YAML {sorted(set(yaml) - set(want))}, "
        f"only in {cls.__name__} {sorted(set(want) - set(yaml))}"
    )
    differ = {k: (yaml[k], want[k]) for k in want if yaml[k] != want[k]}
    assert not differ, f"{group}: YAML vs {cls.__name__} defaults (yaml, python): {differ}"


def test_train_script_defaults_are_the_dataclass_defaults():
    cfg = _compose("config", [])  # data=moses_sample, model=default, train=default
    _agree("data", cfg["data"], DataConfig)
    _agree("model", cfg["model"], ModelConfig)
    _agree("train", cfg["train"], TrainConfig)


@pytest.mark.parametrize(
    ("preset", "experiment", "decoder", "width"),
    [
        ("gru512", "moses_gru512", "gru", 512),
        ("cifg512", "moses", "cifg", 512),
        ("cifg768", "moses_cifg768_160k", "cifg", 768),
    ],
)
def test_a_benchmark_preset_is_the_decoder_of_its_moses_experiment(
    preset, experiment, decoder, width
):
    """model=gru512, model=cifg512 and model=cifg768 (the benchmark's train_<preset> stages) are
    model/default with the decoder width and type of experiment=moses_gru512, experiment=moses
    and experiment=moses_cifg768_160k, whose grammar mask, ring-size limit and matmul operand
    type are training choices, not the architecture."""
    preset_cfg = _compose("config", [f"model={preset}"])["model"]
    default = _compose("config", [])["model"]
    recipe = _compose("config", [f"experiment={experiment}"])["model"]
    assert preset_cfg["dec_hidden"] == recipe["dec_hidden"] == width
    assert preset_cfg["decoder"] == recipe["decoder"] == decoder
    changed = ("dec_hidden", "decoder")
    assert {k: v for k, v in preset_cfg.items() if k not in changed} == {
        k: v for k, v in default.items() if k not in changed
    }
    masks = ("grammar", "max_ring", "dtype")
    assert {k: v for k, v in recipe.items() if k not in masks} == {
        k: v for k, v in preset_cfg.items() if k not in masks
    }


@pytest.mark.parametrize("method", ["gradient", "bo", "lolbo", "constrained"])
def test_every_optimize_group_is_its_methods_config(method):
    cfg = _compose("optimize_run", [f"optimize={method}", "run_dir=unused"])
    assert cfg["optimize"]["method"] == method
    _agree("optimize", cfg["optimize"], METHODS[method].config)


def test_a_disagreement_is_caught():
    cfg = _compose("config", ["train.lr=0.5"])
    with pytest.raises(AssertionError, match=r"'lr': \(0.5, 0.002\)"):
        _agree("train", cfg["train"], TrainConfig)


def test_the_cli_offers_every_registered_search():
    from molvae import cli

    assert set(cli.SEARCH_METHODS) == {n for n, m in METHODS.items() if m.search}


def test_the_evaluate_script_defaults_to_the_full_suite_like_the_cli():
    """molvae.evaluate always computes the MOSES suite; the script and `molvae evaluate` do
    too unless asked for the basic metrics (an evaluate.py run after `make demo` used to
    replace the demo's full metrics with the basic ones)."""
    from molvae import cli

    assert OmegaConf.load(CONF / "evaluate.yaml")["metrics"] == "all"
    assert not cli.parser().parse_args(["evaluate", "x.csv"]).basic
