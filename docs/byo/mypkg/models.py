"""Any torch.nn.Module: its config names the class and its constructor's arguments."""

from torch import Tensor, nn


class MLP(nn.Module):
    def __init__(self, dim: int = 16, hidden: int = 64, num_classes: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # logits: the training loss is cross-entropy
