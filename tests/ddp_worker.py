"""Run by test_train.py under torchrun (2 processes, gloo): train `tiny` a few steps with
DistributedDataParallel and save each rank's final weights."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from toy_pairs import ToyPairs  # noqa: E402

from cdflow_lib import train  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    rank, world, _ = train._distributed()
    cfg = train.recipe_config("synthetic", model="tiny", image_size=16, batch_size=2, epochs=1, max_steps=3,
                              augment=False, device="cpu", out=str(out), progress=False, lr=1e-3)
    trainer = train.Trainer(cfg, ToyPairs(16, 16), None, rank, world)
    model = trainer.fit()
    torch.save(model.state_dict(), out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()
