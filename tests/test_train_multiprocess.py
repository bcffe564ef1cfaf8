"""DSPOTrainer in 2 CPU processes on gloo: gradients are averaged across processes and the
logged metrics cover the pairs of both processes, not rank 0's.

Launch: `accelerate launch --cpu --num_processes 2` goes through mpirun (it needs an MPI
hostfile), so the test uses accelerate's torchrun launcher (`--multi_gpu`) with
ACCELERATE_USE_CPU=true: the processes then come up as MULTI_CPU on the gloo backend.

The worker (train_worker.py) runs two steps of batch 1 per process; the same training in one
process with gradient accumulation 2 sees the same pairs, noise and timesteps, so its
gradients and metrics must match too.
"""

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_worker import CONFIG, make_pairs

from dspo_core.loss import LOSS_TYPES
from dspo_core.sr import TinySDBackbone, TinySDConfig, build_tiny_sd
from dspo_core.train import DSPOTrainer, TrainConfig

torch.set_num_threads(1)

WORKER = Path(__file__).resolve().parent / "train_worker.py"
LOCAL_KEYS = ("pairs_per_s",)  # wall-clock timing: the only per-process value


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model_dir = build_tiny_sd(str(tmp_path_factory.mktemp("tiny")), seed=0)
    out_dir = tmp_path_factory.mktemp("ranks")
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(WORKER), model_dir, str(out_dir),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=150, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    ranks = [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    return model_dir, ranks


def test_gradients_and_weights_agree_across_ranks(run):
    _, (rank0, rank1) = run
    assert (rank0["rank"], rank1["rank"], rank0["num_processes"]) == (0, 1, 2)
    assert rank0["distributed"] == ("MULTI_CPU", "gloo")
    for step0, step1 in zip(rank0["steps"], rank1["steps"]):
        # the ranks trained on different pairs...
        assert set(step0["pairs"]["index"].tolist()).isdisjoint(step1["pairs"]["index"].tolist())
        assert not torch.equal(step0["pairs"]["z"], step1["pairs"]["z"]) or step0["pairs"]["z"].abs().sum() == 0
        # ...and hold the same all-reduced gradient and the same weights after the update
        assert step0["grad"].abs().sum() > 0
        assert torch.equal(step0["grad"], step1["grad"])
        assert torch.equal(step0["params"], step1["params"])
        assert step0["metrics"]["grad_norm"] == pytest.approx(step0["grad"].norm().item(), rel=1e-5)


def test_metrics_are_the_mean_over_the_pairs_of_both_ranks(run):
    _, (rank0, rank1) = run
    for step0, step1 in zip(rank0["steps"], rank1["steps"]):
        metrics = step0["metrics"]
        for key, value in metrics.items():
            if key not in LOCAL_KEYS:
                assert step1["metrics"][key] == value, key  # every rank logs the same numbers
        union = {key: torch.cat([step0["pairs"][key], step1["pairs"][key]]).double() for key in step0["pairs"]}
        z, weight = union["z"], union["weight"]
        assert metrics["loss"] == pytest.approx(((weight * LOSS_TYPES["sigmoid"](z)).sum() / weight.sum()).item(), rel=1e-9)
        assert metrics["margin"] == pytest.approx(z.mean().item(), rel=1e-9, abs=1e-12)
        assert metrics["implicit_acc"] == pytest.approx((z > 0).double().mean().item())
        for key in ("d_w_policy", "d_w_ref", "d_l_policy", "d_l_ref"):
            assert metrics[key] == pytest.approx(union[key].mean().item(), rel=1e-9), key
            assert metrics[key] != pytest.approx(step0["pairs"][key].double().mean().item(), rel=1e-9), key
    z0, z1 = rank0["steps"][1]["pairs"]["z"], rank1["steps"][1]["pairs"]["z"]
    assert rank0["steps"][1]["metrics"]["margin"] == pytest.approx(((z0.sum() + z1.sum()) / 2).item(), rel=1e-6)
    assert not math.isclose(rank0["steps"][1]["metrics"]["margin"], z0.double().mean().item(), rel_tol=1e-6)
    assert rank0["eval"] == rank1["eval"]


def test_two_processes_equal_one_process_with_accumulation(run):
    model_dir, (rank0, _) = run
    config = TrainConfig(**{**CONFIG, "gradient_accumulation_steps": 2})
    backbone = TinySDBackbone(TinySDConfig(path=model_dir))
    single = DSPOTrainer(backbone, config, make_pairs(6, 0), eval_pairs=make_pairs(3, 9))
    first = single.train_step()
    grad = torch.cat([p.grad.flatten() for p in single.params])
    expected = rank0["steps"][0]
    assert ((grad - expected["grad"]).norm() / expected["grad"].norm()).item() < 1e-5
    for key in ("loss", "margin", "implicit_acc", "d_w_policy", "d_w_ref", "d_l_policy", "d_l_ref", "grad_norm"):
        assert first[key] == pytest.approx(expected["metrics"][key], rel=1e-5, abs=1e-9), key
    second = single.train_step()
    # after one update the weights differ by float rounding (mean of all-reduce vs sum of halves),
    # which beta = 5000 lifts to ~1e-4 in z
    for key in ("loss", "margin"):
        assert second[key] == pytest.approx(rank0["steps"][1]["metrics"][key], abs=5e-3), key
    evaluation = single.evaluate()  # 3 held-out pairs: 2 + 1 (padded) on two ranks
    for key, value in rank0["eval"].items():
        assert evaluation[key] == pytest.approx(value, rel=1e-4, abs=5e-3), key
