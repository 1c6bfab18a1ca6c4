import pytest
import torch


def perturbed_state_dict(model: torch.nn.Module, seed: int, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """A new state dict (tied tensors stay tied: noise is drawn once per storage). The noise also
    makes the random model's next-token distributions peaked, so greedy choices are not near-ties."""
    gen = torch.Generator().manual_seed(seed)
    noise: dict[int, torch.Tensor] = {}
    out = {}
    for name, t in model.state_dict().items():
        if t.data_ptr() not in noise:
            noise[t.data_ptr()] = scale * torch.randn(t.shape, generator=gen)
        out[name] = t + noise[t.data_ptr()]
    return out


@pytest.fixture(scope="session")
def perturbed():
    """`perturbed(model, seed)`: the model's weights plus seeded noise, as a new state dict."""
    return perturbed_state_dict
