"""build_empty: a model for a checkpoint to fill is built without its random initialisation,
and falls back to a normal build wherever memory left unset could reach the forward pass."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn


class WithComputedBuffer(nn.Module):
    """Like a position-id or attention-mask buffer: computed in __init__, not saved."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("steps", torch.arange(4.0), persistent=False)

    def forward(self, x: Any) -> Any:
        return self.fc(x) + self.steps


class WithTensorAttribute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = torch.full((4,), 2.0)  # neither a parameter nor a buffer

    def forward(self, x: Any) -> Any:
        return self.fc(x) * self.scale


class ComputesInInit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.width = int(torch.tensor(4).item())  # cannot run on the meta device


def test_an_empty_build_loads_to_the_same_model() -> None:
    from torchvision.models import resnet18

    from pairmine.encoders.base import build_empty, load_state_strict

    torch.manual_seed(0)
    reference = resnet18().eval()
    with torch.no_grad():  # BatchNorm statistics a checkpoint carries
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(7)
    empty = build_empty(resnet18)
    assert not any(t.is_meta for t in [*empty.parameters(), *empty.buffers()])
    assert all(int(b) == 0 for n, b in empty.named_buffers() if n.endswith("num_batches_tracked"))
    load_state_strict(empty, reference.state_dict(), "ckpt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(empty.eval()(x), reference(x))


def test_a_checkpoint_that_leaves_a_weight_unset_is_refused() -> None:
    from torchvision.models import resnet18

    from pairmine.encoders.base import build_empty, load_state_strict
    from pairmine.errors import CheckpointError

    state = resnet18().state_dict()
    del state["layer1.0.conv1.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \[layer1\.0\.conv1\.weight\]"):
        load_state_strict(build_empty(resnet18), state, "ckpt")


@pytest.mark.parametrize("cls", [WithComputedBuffer, WithTensorAttribute, ComputesInInit])
def test_state_no_checkpoint_carries_gets_a_normal_build(cls: type[nn.Module]) -> None:
    from pairmine.encoders.base import build_empty

    torch.manual_seed(0)
    want = cls()
    torch.manual_seed(0)
    got = build_empty(cls)
    assert not any(t.is_meta for t in [*got.parameters(), *got.buffers()])
    for name, value in vars(want).items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(getattr(got, name), value)
    assert all(torch.equal(a, b) for a, b in zip(got.buffers(), want.buffers(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(got.parameters(), want.parameters(),
                                                 strict=True))


def test_modules_picks_the_model_out_of_what_the_factory_returns() -> None:
    from pairmine.encoders.base import build_empty

    net, width = build_empty(lambda: (nn.Linear(3, 5), 5), lambda built: built[0])
    assert width == 5 and not net.weight.is_meta
