"""The zoo of :mod:`audit_detection` (``bench/audit_detection.py``): the honest models (random initialisations,
SGD checkpoints, FedAvg rounds, Opacus DP-SGD) and the malicious servers' models over their settings, each with
the attack's SSIM on the same round's client batch. Imported by that script; nothing here runs on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

import leakage
from leakage.engine.metrics import ssim_per_image
from leakage.engine.models import build_model
from leakage.federated.fedavg import FedAvg
from leakage.federated.server import FishingServer, ImprintServer, TrapWeightServer

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
DATA = {"lenet": "mnist", "mlp": "mnist", "simple_cnn": "cifar10", "resnet18": "cifar10"}
TORCHVISION = ("mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1", "regnet_x_400mf", "efficientnet_b0")
B = 16
_LOADED = {}


def images(data: str, indices) -> tuple[torch.Tensor, torch.Tensor]:
    if data not in _LOADED:
        _LOADED[data] = leakage.bundled_images(data, range(1000 if data == "mnist" else 20))
    x, y = _LOADED[data]
    return x[list(indices)], y[list(indices)]


def client_batch(data: str, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The client's batch of 16: MNIST test images 0-199 (never trained on), CIFAR-10 16 of the 20 bundled."""
    start = (B * i) % 192 if data == "mnist" else i % 5
    return images(data, range(start, start + B))


def train_pool(data: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What the server's model is trained on: MNIST 200-999; CIFAR-10 the 20 images and their mirror images."""
    if data == "mnist":
        return images("mnist", range(200, 1000))
    x, y = images("cifar10", range(20))
    return torch.cat([x, x.flip(-1)]), torch.cat([y, y])


def fresh(name: str, seed: int) -> torch.nn.Module:
    if name in TORCHVISION:
        import torchvision

        torch.manual_seed(seed)
        return getattr(torchvision.models, name)(num_classes=10).eval()
    return build_model(name, SHAPES[DATA[name]], 10, seed=seed).eval()


def snapshot(name: str, model: torch.nn.Module) -> torch.nn.Module:
    """A clean copy (no optimizer or Opacus hooks) of ``model``'s weights."""
    out = fresh(name, 0)
    out.load_state_dict(model.state_dict())
    return out.eval()


def sgd_epochs(name: str, seed: int, epochs: int, lr: float = 0.1, size: int = 256):
    """``(label, model, previous)`` after each epoch of SGD (mini-batches of 32) on the training pool."""
    x, y = train_pool(DATA[name])
    x, y = x[:size], y[:size]
    model = fresh(name, seed).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    previous = snapshot(name, model)
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(x.shape[0], generator=gen).split(32):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        now = snapshot(name, model)
        yield f"{name} seed {seed} SGD epoch {epoch}", now, previous
        previous = now


def sgd_steps(name: str, seed: int, steps=(1, 3, 10), lr: float = 0.1):
    x, y = train_pool(DATA[name])
    model, done = fresh(name, seed).train(), 0
    init = snapshot(name, model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for target in steps:
        while done < target:
            idx = torch.arange(done * 32, done * 32 + 32) % x.shape[0]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            done += 1
        yield f"{name} seed {seed} {target} SGD steps", snapshot(name, model), init


def fedavg_rounds(name: str, seed: int, rounds: int, clients: int = 4, lr: float = 0.1):
    """FedAvg: each round, ``clients`` clients run one local epoch (the package's FedAvg client, local rate
    ``lr``) on their own images; the global model moves by their mean update."""
    x, y = train_pool(DATA[name])
    per = 32 if DATA[name] == "mnist" else 8
    client = FedAvg(local_epochs=1, local_batch_size=per // 4, local_lr=lr)
    model = fresh(name, seed)
    for r in range(1, rounds + 1):
        start = (r * clients * per) % (x.shape[0] - clients * per + 1)
        xs = x[start:start + clients * per].view(clients, per, *x.shape[1:])
        ys = y[start:start + clients * per].view(clients, per)
        update = leakage.client_update(model, xs, ys, fedavg=client)
        new = snapshot(name, model)
        with torch.no_grad():
            for n, p in new.named_parameters():
                p.add_(update[n].mean(dim=0))
        yield f"{name} seed {seed} FedAvg round {r}", new, model
        model = new


def dp_epochs(name: str, seed: int, epochs: int, noise: float):
    """DP-SGD with Opacus (rate 32/256 Poisson sampling, clip 1, ``noise`` multiplier), a checkpoint per epoch."""
    from opacus import PrivacyEngine

    x, y = train_pool(DATA[name])
    x, y = x[:256], y[:256]
    model = fresh(name, seed).train()
    previous = snapshot(name, model)
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    engine = PrivacyEngine(accountant="rdp")
    private, opt, loader = engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                               data_loader=loader, noise_multiplier=noise, max_grad_norm=1.0)
    for epoch in range(1, epochs + 1):
        for xb, yb in loader:
            if xb.shape[0] == 0:
                continue
            opt.zero_grad()
            F.cross_entropy(private(xb), yb).backward()
            opt.step()
        now = snapshot(name, model)
        yield f"{name} seed {seed} DP-SGD noise {noise:g} epoch {epoch} (eps {engine.get_epsilon(1e-5):.1f})", now, previous
        previous = now


def honest_zoo(quick: bool):
    """``(family, label, model, previous)`` for every honest model."""
    n = 2 if quick else 25
    for name in ("lenet", "mlp", "simple_cnn"):
        for seed in range(n):
            yield "random init", f"{name} seed {seed} init", fresh(name, seed), None
    for seed in range(1 if quick else 6):
        yield "random init", f"resnet18 seed {seed} init", fresh("resnet18", seed), None
    for arch in TORCHVISION[:1] if quick else TORCHVISION:
        for seed in range(1 if quick else 4):
            yield "torchvision init", f"{arch} seed {seed} init", fresh(arch, seed), None
    for name in ("lenet", "mlp", "simple_cnn"):
        for seed in range(1 if quick else 3):
            for label, model, previous in sgd_epochs(name, 100 + seed, 2 if quick else 4):
                yield "SGD epochs", label, model, previous
            for label, model, previous in sgd_steps(name, 200 + seed):
                yield "SGD steps", label, model, previous
    if not quick:
        for label, model, previous in sgd_epochs("resnet18", 100, 3, lr=0.05, size=40):
            yield "SGD epochs", label, model, previous
    for name in ("lenet", "mlp", "simple_cnn"):
        for seed in range(1 if quick else (2 if name != "simple_cnn" else 1)):
            for label, model, previous in fedavg_rounds(name, 300 + seed, 2 if quick else 5):
                yield "FedAvg rounds", label, model, previous
    for name in ("lenet", "mlp", "simple_cnn"):
        for seed in range(1 if quick else 2):
            for noise in (1.0,) if quick else (0.5, 1.0):
                for label, model, previous in dp_epochs(name, 400 + seed, 1 if quick else 2, noise):
                    yield "DP-SGD (Opacus)", label, model, previous


def high_rate_zoo(quick: bool):
    """``(family, label, model, previous)``: honest rounds at learning rates ten and five times the zoo's (SGD at
    rate 1 from initialisation, FedAvg at local rate 0.5), a probe of the checks that read the previous round;
    not part of the honest zoo the 1% threshold is set on."""
    for name in ("mlp", "simple_cnn") if quick else ("lenet", "mlp", "simple_cnn"):
        for label, model, previous in sgd_steps(name, 500, steps=(1, 3, 10), lr=1.0):
            yield "high learning rates", label.replace("SGD steps", "SGD steps at rate 1"), model, previous
        for label, model, previous in fedavg_rounds(name, 600, 1 if quick else 3, lr=0.5):
            yield "high learning rates", label + " at local rate 0.5", model, previous


def matched_ssim(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``[B]``: each client image's SSIM with the reconstruction the Hungarian matching (l2) gives it."""
    recon = recon.clamp(0, 1)
    rows, cols = linear_sum_assignment(torch.cdist(truth.flatten(1), recon.flatten(1)).numpy())
    out = torch.zeros(truth.shape[0])
    out[torch.as_tensor(rows)] = ssim_per_image(recon[cols], truth[rows]).float()
    return out


def malicious_zoo(quick: bool):
    """``(server, setting, label, model, previous, batch, ssim per client image)``: ``previous`` is the round the
    client trained last (the model the server modified, or the one before the server's honest FedAvg round)."""
    bases = [("lenet", 0), ("mlp", 0), ("lenet", 1), ("mlp", 1)][: 2 if quick else 4]
    for bins in (8, 64) if quick else (2, 8, 32, 128, 512):
        for i, (name, seed) in enumerate(bases):
            x, y = client_batch("mnist", 20 + i)
            server = ImprintServer(num_bins=bins).for_dataset("mnist")
            base = fresh(name, seed)
            sent = server.send(base, SHAPES["mnist"])
            yield "imprint", f"{bins} bins", f"imprint {bins} bins ({name} seed {seed})", sent, base, (x, y), \
                _attack(sent, server, x, y, "imprint")
    for scale in (0.7, 0.95) if quick else (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99):
        for i in range(2 if quick else 4):
            x, y = client_batch("mnist", 30 + i)
            server, base = TrapWeightServer(trap_scale=scale, seed=i), fresh("mlp", i)
            sent = server.send(base, SHAPES["mnist"])
            yield "trap weights", f"scale {scale:g}", f"trap weights {scale:g} (mlp seed {i})", sent, base, (x, y), \
                _attack(sent, server, x, y, "trap_weights")
    for scale in (0.95,) if quick else (0.95, 0.98, 0.99):  # planted after an honest FedAvg round the server ran
        for i in range(2 if quick else 4):
            x, y = client_batch("mnist", 30 + i)
            _, base, previous = next(fedavg_rounds("mlp", 700 + i, 1))
            server = TrapWeightServer(trap_scale=scale, seed=i)
            sent = server.send(base, SHAPES["mnist"])
            yield "trap weights", f"scale {scale:g}, after a FedAvg round", f"trap weights {scale:g} after FedAvg (mlp seed {700 + i})", \
                sent, previous, (x, y), _attack(sent, server, x, y, "trap_weights")
    xs, ys = images("mnist", range(200))
    for m in (1, 1000) if quick else (0.5, 1, 2, 4, 8, 1000):
        for target in (7,) if quick else (2, 7, 9):
            chosen = [int((ys == target).nonzero()[0]), *(ys != target).nonzero().flatten()[: B - 1].tolist()]
            x, y = xs[chosen], ys[chosen]
            server, base = FishingServer(target_class=target, multiplier=m), fresh("lenet", 1234)
            sent = server.send(base, SHAPES["mnist"])
            yield "fishing", f"x{m:g}", f"fishing class {target} x{m:g} (lenet)", sent, base, (x, y), \
                _attack(sent, server, x, y, "fishing")


def honest_readout(quick: bool):
    """The trap-weight read-out of honest ``mlp`` models' first layer (what it gives back without trap weights):
    ``(label, ssim per client image)``, the baseline for the trap-weight settings."""
    for i in range(2 if quick else 4):
        x, y = client_batch("mnist", 30 + i)
        model, server = fresh("mlp", i), TrapWeightServer()
        server.layer, server.model = "net.1", model
        yield f"honest mlp seed {i}", _attack(model, server, x, y, "trap_weights")


def _attack(sent, server, x, y, attack: str) -> torch.Tensor:
    """The attack on the client's FedSGD update of ``(x, y)``: SSIM per client image (fishing: the fished one)."""
    result = leakage.invert(sent, leakage.client_update(sent, x, y), input_shape=tuple(x.shape[1:]), num_classes=10,
                            batch_size=x.shape[0], attack=attack, server=server)
    recon = result.images[0]
    if attack == "fishing":  # one image, the fished one (the first of the batch)
        return ssim_per_image(recon.clamp(0, 1), x[:1].expand_as(recon)).max().reshape(1).float()
    return matched_ssim(recon, x)
