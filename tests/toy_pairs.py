"""A tiny deterministic pair set for training tests: smooth random images and a global
colour shift whose size is the label."""
import torch


class ToyPairs(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, size: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        base = torch.rand(n, 3, size // 4, size // 4, generator=g)
        self.x = torch.nn.functional.interpolate(base, size=size, mode="bilinear", align_corners=False)
        shift = (torch.rand(n, 3, 1, 1, generator=g) - 0.5) * 0.4
        self.y = (self.x + shift).clamp(0, 1)
        self.dv = 10 * shift.flatten(1).norm(dim=1)

    def __len__(self):
        return len(self.dv)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i], "dv": self.dv[i], "aligned": bool(i % 2)}
