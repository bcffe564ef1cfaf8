"""Worker of test_train_multiprocess.py: two DSPO steps and one evaluation on fixed data.

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/train_worker.py MODEL_DIR OUT_DIR

Each process writes ``OUT_DIR/rank<r>.pt``: per step its metrics, its local per-pair terms
(``trainer.last_pairs``), the gradient left in ``.grad`` (after the all-reduce; no clipping)
and the parameters after the update; then the eval metrics. ``make_pairs`` and ``CONFIG``
are imported by the test to run the same training in one process.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from dspo_core.sr import TinySDBackbone, TinySDConfig
from dspo_core.train import DSPOTrainer, PairExample, TrainConfig

CONFIG = {"max_steps": 2, "batch_size": 1, "max_grad_norm": None, "learning_rate": 1e-3, "seed": 3}
SIZE = 64


def make_pairs(count, seed):
    """Random pairs with different instance masks, weights and texts."""
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(count):
        mask = np.zeros((SIZE, SIZE), bool)
        top, left = rng.integers(0, SIZE // 2, 2)
        mask[top : top + 24, left : left + 17 + index] = True
        pairs.append(
            PairExample(
                lq=rng.integers(0, 256, (SIZE // 4, SIZE // 4, 3), dtype=np.uint8),
                winner=rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
                loser=rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
                mask=mask,
                weight=float(rng.uniform(0.2, 1.0)),
                positive_text=f"object {index}",
                negative_text=f"artifact {index}" if index % 2 else "",
                pair_id=f"w{index}",
            )
        )
    return pairs


def flat(tensors):
    return torch.cat([tensor.detach().flatten().cpu() for tensor in tensors])


def main(model_dir, out_dir):
    torch.set_num_threads(1)
    backbone = TinySDBackbone(TinySDConfig(path=model_dir))
    trainer = DSPOTrainer(backbone, TrainConfig(**CONFIG), make_pairs(6, 0), eval_pairs=make_pairs(3, 9))
    steps = []
    for _ in range(CONFIG["max_steps"]):
        metrics = trainer.train_step()
        steps.append(
            {
                "metrics": metrics,
                "pairs": trainer.last_pairs,
                "grad": flat(p.grad for p in trainer.params),
                "params": flat(trainer.params),
            }
        )
    record = {
        "rank": trainer.accelerator.process_index,
        "num_processes": trainer.accelerator.num_processes,
        "distributed": (trainer.accelerator.distributed_type.value, torch.distributed.get_backend()),
        "steps": steps,
        "eval": trainer.evaluate(),
    }
    torch.save(record, Path(out_dir) / f"rank{record['rank']}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
