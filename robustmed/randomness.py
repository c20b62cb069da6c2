"""One randomness interface for every randomized model (docs/models.md, Defenses).

Noise never depends on ``eval()``. A :class:`RandomModule` draws a new realization
on every forward unless frozen; ``freeze`` holds the current one (the [A] phase of
RPF/CTRW/RPAN training, fixed-randomness attacks of check C3). Each module owns a
seeded generator, so a seed reproduces a realization.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager

import torch
from torch import nn


class RandomModule(nn.Module):
    """Base class: subclasses call :meth:`maybe_resample` at the start of ``forward``.

    ``draw()`` must create the realization (kernels, noise maps) with :meth:`normal`
    or :meth:`uniform`; per-sample noise that depends on the batch (MAN) is drawn in
    ``forward`` itself via :meth:`normal` and cached by shape while frozen.
    """

    def __init__(self):
        super().__init__()
        self.frozen = False
        self._seed = 0
        self._generators: dict[str, torch.Generator] = {}
        self._cache: dict = {}

    # --- realization control -------------------------------------------------
    def draw(self) -> None:
        """Draw a batch-shared realization; modules with only per-forward noise leave this empty."""

    def resample(self) -> None:
        self._cache.clear()
        self.draw()

    def maybe_resample(self) -> None:
        if not self.frozen:
            self.resample()

    def freeze(self) -> None:
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False
        self._cache.clear()

    def reseed(self, seed: int) -> None:
        self._seed = seed
        self._generators.clear()
        self._cache.clear()

    # --- sampling --------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[key]

    def normal(self, shape, like: torch.Tensor, std: float = 1.0, key=None) -> torch.Tensor:
        """N(0, std²) noise on ``like``'s device; with ``key`` it is reused while frozen."""
        if key is not None and self.frozen and (key, tuple(shape)) in self._cache:
            return self._cache[(key, tuple(shape))]
        noise = torch.randn(shape, generator=self._generator(like.device), device=like.device, dtype=like.dtype) * std
        if key is not None and self.frozen:
            self._cache[(key, tuple(shape))] = noise
        return noise

    def uniform(self, shape, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(shape, generator=self._generator(like.device), device=like.device, dtype=like.dtype)


def random_modules(model: nn.Module) -> list[RandomModule]:
    return [m for m in model.modules() if isinstance(m, RandomModule)]


def _active_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0 for m in model.modules())


def is_randomized(model: nn.Module) -> bool:
    """Declared randomness (random modules) or dropout active at inference (MC dropout)."""
    return bool(random_modules(model)) or (not model.training and _active_dropout(model))


def resample(model: nn.Module) -> None:
    for module in random_modules(model):
        module.resample()


def freeze(model: nn.Module) -> None:
    for module in random_modules(model):
        module.freeze()


def unfreeze(model: nn.Module) -> None:
    for module in random_modules(model):
        module.unfreeze()


@contextmanager
def frozen(model: nn.Module, fresh: bool = True):
    """Hold one realization for the duration (draws a fresh one first unless ``fresh=False``)."""
    if fresh:
        resample(model)
    freeze(model)
    try:
        yield model
    finally:
        unfreeze(model)


def seed_model(model: nn.Module, seed: int) -> None:
    """Give every random module its own generator derived from (seed, module name)."""
    for name, module in model.named_modules():
        if isinstance(module, RandomModule):
            digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
            module.reseed(int.from_bytes(digest[:8], "little") >> 1)


class InputNoise(RandomModule):
    """Additive Gaussian noise, one map per forward shared by the whole batch (like PNI/RPF realizations).

    The smallest randomized model there is: tests and benchmarks put it in front of a classifier.
    """

    def __init__(self, shape, std: float = 0.1):
        super().__init__()
        self.shape, self.std, self.noise = shape, std, None

    def draw(self):
        self.noise = self.normal(self.shape, like=torch.zeros(()), std=self.std)

    def forward(self, x):
        self.maybe_resample()
        return x + self.noise


class SeededDropout(nn.Dropout, RandomModule):
    """Inverted dropout whose masks come from the module's seeded generator, not torch's global one.

    Same ``p``, scaling (kept units × 1/(1 − p), so the same gradients) and ``training`` switch as
    :class:`nn.Dropout`, and no parameters or buffers (same state_dict keys). Dropout kept on at
    inference (MC dropout: rpan-code, the authors' always-on dropout) is then a random module like any
    other: :func:`seed_model` reproduces its masks, :func:`freeze` holds one mask per input shape.
    Masks are drawn in float32 whatever the input's dtype (the same draws with and without AMP).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        self.maybe_resample()
        key = ("mask", tuple(x.shape))
        mask = self._cache.get(key) if self.frozen else None
        if mask is None:
            if self.p >= 1:
                mask = torch.zeros(x.shape, device=x.device)
            else:
                u = torch.rand(x.shape, generator=self._generator(x.device), device=x.device)
                mask = (u >= self.p).float() / (1 - self.p)
            if self.frozen:
                self._cache[key] = mask
        mask = mask.to(x.dtype)
        return x.mul_(mask) if self.inplace else x * mask
