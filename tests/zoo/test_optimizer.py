"""zoo.optimizer: the flat (E, P) AdamW is torch.optim.AdamW per member, each with its own learning rate."""
import torch

from zoo.models import CRATE, ModelConfig
from zoo.optimizer import FlatParameters


def new_model(seed, variant="crate"):
    torch.manual_seed(seed)
    return CRATE(ModelConfig(variant=variant, image_size=8, patch_size=4, channels=1, num_classes=10, dim=8, depth=1,
                             heads=2))


def test_flat_adamw_steps_are_torchs_adamw_per_member():
    models = [new_model(0, "crate-fix"), new_model(1, "crate-fix")]
    lrs, weight_decay = [1e-2, 3e-3], 0.05
    stack = FlatParameters(models, torch.device("cpu"))
    references = []
    for model, lr in zip(models, lrs):
        params = [p for p in model.parameters() if p.requires_grad]
        references.append((params, torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=False)))
    g = torch.Generator().manual_seed(0)
    for step in range(1, 4):
        grads = {name: torch.randn(value.shape, generator=g) for name, value in stack.params.items()
                 if name in stack.trainable}
        flat = torch.cat([grads[name].reshape(2, -1) for name in stack.trainable], dim=1)
        stack.adamw_step(torch.nn.functional.pad(flat, (0, stack.flat.shape[1] - stack.width)), lrs, [step, step],
                         weight_decay)
        for e, (params, optimizer) in enumerate(references):
            for p, name in zip(params, stack.trainable):
                p.grad = grads[name][e].clone()
            optimizer.step()
    for e, model in enumerate(models):
        weights = stack.member_state_dict(e)
        for name, p in model.named_parameters():
            assert torch.equal(weights[name], p.detach()), (e, name)     # frozen ones untouched on both sides
    assert stack.width == sum(p.numel() for p in models[0].parameters() if p.requires_grad)
