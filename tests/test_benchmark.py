"""experiments/benchmark.py: the contract keys, the ratios, and one real stage end to end."""

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parents[1] / "experiments"))
benchmark = pytest.importorskip("benchmark")

CONTRACT = (
    "matmul_gflops",
    "train_mol_per_s_default",
    "train_mol_per_s_moses_gru",
    "mfu_default",
    "mfu_moses_gru",
    "sample_decode_mol_per_s",
    "sample_end_to_end_mol_per_s",
    "rdkit_selfies_floor_mol_per_s",
    "preprocess_mol_per_s",
    "evaluate_30k_seconds",
    "peak_rss_mb",
    "peer_train_mol_per_s",
)


def test_summary_has_the_contract_keys_and_the_ratios():
    stages = {
        "matmul": {"matmul_gflops": 200.0, "matmul_gflops_bf16": 400.0, "peak_rss_mb": 300.0},
        "train_default": {"train_mol_per_s": 1000.0, "train_gflops": 80.0, "peak_rss_mb": 1400.0},
        "train_gru512": {"train_mol_per_s": 500.0, "train_gflops": 120.0},
        "train_moses_gru": {
            "train_mol_per_s": 140.0,
            "train_gflops": 150.0,
            "matmul_gflops_here": 187.5,
            "peak_rss_mb": 9e3,
        },
        "train_moses_gru_bf16": {
            "train_mol_per_s": 160.0,
            "train_gflops": 200.0,
            "matmul_gflops_bf16_here": 300.0,  # lower than the matmul stage's: not used
        },
        "train_cifg768_bf16": {"train_mol_per_s": 60.0, "train_gflops": 100.0},
        "sample": {
            "sample_decode_mol_per_s": 8000.0,
            "sample_end_to_end_mol_per_s": 3000.0,
            "rdkit_selfies_floor_mol_per_s": 6000.0,
            "sample_decode_mflop_per_mol": 20.0,
            "matmul_gflops_here": 100.0,  # lower than the matmul stage's: not used
            "sample_decode_mol_per_s_grammar": 4000.0,
            "sample_end_to_end_mol_per_s_grammar": 2000.0,
        },
        "preprocess": {"preprocess_mol_per_s": 4000.0},
        "evaluate": {"evaluate_30k_seconds": 240.0},
        "peer": {"train_mol_per_s": 80.0, "peak_rss_mb": 2e4},
    }
    s = benchmark.summary(stages)
    assert set(CONTRACT) <= set(s)
    assert s["mfu_default"] == pytest.approx(0.4) and s["mfu_moses_gru"] == pytest.approx(0.75)
    assert s["train_mol_per_s_gru512"] == 500.0 and s["mfu_gru512"] == pytest.approx(0.6)
    stages["matmul"]["matmul_gflops"] = 100.0  # a slow moment: the stage's own peak is used
    assert benchmark.summary(stages)["mfu_moses_gru"] == pytest.approx(0.8)
    stages["matmul"]["matmul_gflops"] = 200.0
    assert s["moses_gru_vs_peer"] == pytest.approx(1.75)
    assert s["moses_gru_bf16_vs_peer"] == pytest.approx(2.0)
    assert s["mfu_moses_gru_bf16"] == pytest.approx(0.5)  # against the bfloat16 peak
    assert s["train_mol_per_s_cifg768_bf16"] == 60.0  # the width arm's architecture
    assert s["mfu_cifg768_bf16"] == pytest.approx(0.25)
    assert s["sample_floor_ratio"] == pytest.approx(2.0)
    assert s["sample_floor_ratio_serial"] == pytest.approx(1.75)
    assert s["mfu_sample_decode"] == pytest.approx(8000 * 20e6 / 200e9)
    # decoding at 200 GFLOP/s: 10,000 molecules/s, so at best 1 + 6,000/10,000
    assert s["sample_floor_ratio_bound"] == pytest.approx(1.6)
    assert s["sample_floor_ratio_grammar"] == pytest.approx(3.0)  # the mask's cost, end to end
    assert s["sample_floor_ratio_serial_grammar"] == pytest.approx(2.5)
    assert "mfu_sample_decode_grammar" not in s
    assert s["peak_rss_mb"] == 9e3 and s["peer_peak_rss_mb"] == 2e4  # ours, and the reference's
    md = benchmark.markdown(
        {"machine": {"platform": "x", "python": "3", "cpus": 2}, **s, "stages": stages}
    )
    assert "- moses_gru_vs_peer: 1.750" in md and "| sample | sample_decode_mol_per_s |" in md


def test_missing_reference_is_reported_not_raised(tmp_path):
    cfg = OmegaConf.create(
        {"peer_python": str(tmp_path / "none"), "peer_molecules": 10, "peer_batches": 1}
    )
    assert "make peer" in benchmark.peer(cfg)["error"]


def test_matmul_stage_runs_in_its_own_process():
    r = benchmark.stage("matmul")
    assert r["matmul_gflops"] > 1 and r["matmul_gflops_bf16"] > 1 and r["peak_rss_mb"] > 10
    assert isinstance(r["tuned_allocator"], bool)


def test_decode_flops_count_each_matmul_once():
    import bench_stages

    from molvae.models.vae import ModelConfig

    cfg = ModelConfig(latent_dim=8, dec_hidden=4, dec_layers=2, vocab_size=5)
    once = 2 * 8 * (4 * 2 + 3 * 4)  # z -> both initial states, z -> layer 0's input
    # per token: 2 recurrent (4x12), layer 1's input (4x12), output (4x5)
    per_token = 2 * (2 * 4 * 12) + 2 * 4 * 12 + 2 * 4 * 5
    assert bench_stages.decode_flops_per_molecule(cfg, 10.0) == once + 10 * per_token


def test_peak_rss_is_the_child_process_own():
    big = "import numpy as np; a = np.ones(40_000_000); print('done', a.sum())"  # 320 MB
    code, out, err, rss = benchmark.run_with_peak_rss([sys.executable, "-c", big])
    assert code == 0 and out.strip() == "done 40000000.0" and 300 < rss < 1500
    code, out, err, rss = benchmark.run_with_peak_rss([sys.executable, "-c", "print(1)"])
    assert code == 0 and rss < 300  # not the earlier, larger child's
    code, _, err, _ = benchmark.run_with_peak_rss([sys.executable, "-c", "raise SystemExit(3)"])
    assert code == 3
