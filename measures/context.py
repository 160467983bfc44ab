"""What every measure receives: the model, its initial weights, a fixed training sample, options, and a cache.

Forward features, logits and weight matrices are computed once per model and shared by all measures. Measures
never mutate the model: perturbations go through ``torch.func.functional_call`` with a parameter dict.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from zoo.errors import BadValueError
from zoo.models import CRATE, VariantOutput


class MeasureUndefined(ValueError):
    """The measure has no value on this model (e.g. log γ with γ ≤ 0); the message says why."""


@dataclass(frozen=True)
class MeasureOptions:
    """Every choice the papers leave open, with its default and why. All of them are written into the output."""
    n_samples: int = 512            # M, training images for data-dependent measures (SPEC default)
    split: str = "train"            # Jiang et al. compute measures on training data
    seed: int = 0                   # picks the sample and seeds every Monte-Carlo search
    # SRR (paper-notes §2.4)
    eps_sq: float = 0.5             # epsilon^2 of the coding rates (SPEC default)
    l0: str = "per-entry"           # ||Z||_0/(N d), the fraction CRATE reports (README: with the raw count the
                                    # sparsity term was most of SRR's level) | raw | per-token (/N) | l1
    aggregate: str = "mean"         # scalar SRR over layers: mean | last | sum
    normalize_tokens: bool = False  # unit-normalise each token before the coding rates
    # spectral product and sum forms
    shared_weights: str = "per-use" # a matrix applied twice on a path (W_qkv of crate-c/-n/-t) enters the
                                    # products and sums twice (per-use, a Lipschitz bound of the path) or once
    # margin
    margin_quantile: float = 0.1    # Jiang's 10th percentile
    # PAC-Bayes sigma and sharpness alpha searches (measure-formulas §8.4-8.6)
    target_drop: float = 0.1        # allowed training-accuracy drop
    search_steps: int = 15          # bisection steps
    search_tolerance: float = 0.01  # stop when |drop - target| < this
    mc_samples: int = 10            # Monte-Carlo draws per sigma
    ascent_steps: int = 10          # projected gradient-ascent steps of the worst-case sharpness search
    magnitude_eps: float = 1e-3     # epsilon of the magnitude-aware PAC-Bayes noise (Jiang's port)
    sharpness_mag_eps: float = 1e-5 # epsilon of the magnitude-aware sharpness box: at 1e-3 the box at alpha = 0
                                    # already costs a trained digits model ~22% accuracy, pinning alpha' to 0
    # adaptive sharpness (Andriushchenko et al.)
    rho: float = 0.05               # perturbation radius (times |w| when adaptive)
    m_sharpness: int = 128          # batch size m of m-sharpness
    adaptive_norm: str = "l2"       # l2 | linf ball of adaptive sharpness; linf at rho = 0.05 saturates the loss
    # optimisation, calibration
    grad_noise_batch: int = 32      # minibatch size of grad-noise (the default zoo's smallest training batch)
    ece_bins: int = 15              # equal-width confidence bins of the expected calibration error

    def __post_init__(self):
        choices = {"split": ("train", "test"), "l0": ("raw", "per-token", "per-entry", "l1"),
                   "aggregate": ("mean", "last", "sum"), "adaptive_norm": ("l2", "linf"),
                   "shared_weights": ("per-use", "once")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise BadValueError(f"measure option {name}={getattr(self, name)!r}; allowed: {', '.join(allowed)}")
        for name in ("n_samples", "eps_sq", "search_steps", "mc_samples", "ascent_steps", "m_sharpness",
                     "grad_noise_batch", "ece_bins",
                     "magnitude_eps", "sharpness_mag_eps", "rho", "target_drop", "search_tolerance"):
            if not getattr(self, name) > 0:
                raise BadValueError(f"measure option {name} must be positive, got {getattr(self, name)!r}")
        if not 0.0 <= self.margin_quantile <= 1.0:
            raise BadValueError(f"measure option margin_quantile must be in [0, 1], got {self.margin_quantile!r}")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "MeasureOptions":
        known = {f.name: f.default for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise BadValueError(f"unknown measure option(s) {', '.join(sorted(unknown))}; allowed: "
                             f"{', '.join(sorted(known))}")
        for name, value in values.items():  # a TOML typo such as n_samples = "64" is named, not a TypeError later
            default = known[name]
            kinds = (int, float) if isinstance(default, float) else (type(default),)
            if not isinstance(value, kinds) or (isinstance(value, bool) and not isinstance(default, bool)):
                raise BadValueError(f"measure option {name} must be {' or '.join(k.__name__ for k in kinds)}, "
                                 f"got {value!r}")
        return cls(**values)


_TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, *_TRANSPOSED_CONVS)


def weight_matrices(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The one rule for which weights enter norm, spectral, heavy-tail and PAC-Bayes measures, for any model.

    Every 2-D parameter (the weights of ``Linear`` layers and bare 2-D parameters), and the weight of every
    convolution as the matrix whose rows are its filters, (out_channels, in_channels/groups · kernel size), as in
    Jiang et al.'s code (its spectral norm is that of this matrix, not of the convolution operator); a transposed
    convolution's weight (in, out/groups, *kernel) is transposed group by group first, so that its rows are its
    out_channels too (a plain transpose would give out/groups rows mixing the groups' input channels).
    In CRATE these are the qkv projections (U^T, counted once even where the tied variants reuse it as the output
    map), the learned or frozen output maps, the ISTA dictionaries, the patch embedding and the head; LayerNorm
    gains and all biases are 1-D and the cls token and position embedding are 3-D, so they are out. Any other
    parameter of 3 or more dimensions outside a convolution is out as well.
    ``state`` (a state_dict) gives the same matrices from other weights, e.g. the initial ones.
    """
    convs = {f"{prefix}.weight" if prefix else "weight": module
             for prefix, module in model.named_modules() if isinstance(module, _CONVS)}
    source = state if state is not None else dict(model.named_parameters())
    out = {}
    for name, p in model.named_parameters():
        if p.ndim == 2:
            out[name] = source[name].detach()
        elif name in convs:
            conv, w = convs[name], source[name].detach()
            if isinstance(conv, _TRANSPOSED_CONVS):   # (groups, in/groups, out/groups, *k) -> (groups, out/groups, ...)
                w = w.reshape(conv.groups, -1, *w.shape[1:]).transpose(1, 2)
            out[name] = w.reshape(conv.out_channels, -1)
    return out


def path_weight_matrices(model: nn.Module, state: dict[str, torch.Tensor] | None = None,
                         shared: str = "per-use") -> dict[str, torch.Tensor]:
    """W_1..W_{d_L} of the spectral product and sum forms: ``weight_matrices`` with, for ``shared="per-use"``,
    each tied qkv matrix listed a second time (key ``<...>.qkv.weight@output_map``) right after itself.

    crate-c/-n/-t apply W_qkv on the way in and again as the output map, so a bound on the attention path's
    Lipschitz constant has ‖W_qkv‖ twice; counted once, those variants would get d_L = 2L + 2 matrices against
    crate's 3L + 2 and a smaller product only for having fewer entries. ``"once"`` lists every parameter once.
    """
    if shared not in ("per-use", "once"):
        raise ValueError(f"shared must be 'per-use' or 'once', got {shared!r}")
    matrices = weight_matrices(model, state)
    if shared == "once":
        return matrices
    tied = {name.rsplit(".", 1)[0] + ".qkv.weight" for name, module in model.named_modules()
            if isinstance(module, VariantOutput) and module.spec.tied}
    out = {}
    for name, w in matrices.items():
        out[name] = w
        if name in tied:
            out[name + "@output_map"] = w
    return out


@dataclass
class MeasureContext:
    model: nn.Module                      # trained classifier (any nn.Module), eval mode; measures must not change it
    init_state: dict[str, torch.Tensor] | None  # state_dict at initialisation (same keys); None: unknown, so the
                                                # needs_init=True measures are left out
    x: torch.Tensor | None                # (M, C, H, W) fixed sample of the chosen split; None: data-free context
    y: torch.Tensor | None                # (M,)
    n_train: int | None                   # m, size of the full training set (for the log(m/sigma) terms)
    options: MeasureOptions = field(default_factory=MeasureOptions)
    cache: dict = field(default_factory=dict)
    training_log: list[dict] | None = None  # runs/<id>/log.csv rows (epoch, step, train_loss ...); None: unknown

    def __post_init__(self):
        self.model.eval()

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), or an error naming the cause when this context was built without data."""
        if self.x is None or self.y is None:
            raise RuntimeError("this context has no data sample (only needs_data=False measures were asked for); "
                               "a measure that reads the data must be registered with needs_data=True")
        return self.x, self.y

    def cached(self, key: str, compute):
        """Compute ``compute()`` once per context and share it between measures."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def features(self) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Logits (M, classes) and per-layer Z_in, Z_half, Z_out (M, N, d) on the sample, one no-grad pass.
        CRATE only: a measure that calls it is registered with ``needs_crate=True``."""
        if not isinstance(self.model, CRATE):
            raise TypeError(f"ctx.features() reads CRATE's layer features, and the model is a "
                            f"{type(self.model).__name__}, not a zoo.models.CRATE; a measure that calls it must be "
                            f"registered with needs_crate=True")
        def run():
            x, _ = self.sample()
            with torch.no_grad():
                return self.model(x, return_features=True)
        return self.cached("features", run)

    def logits(self) -> torch.Tensor:
        """Logits (M, classes) of the sample, one no-grad pass of ``model(x)`` (any classifier)."""
        if isinstance(self.model, CRATE):  # the features pass gives them too: one pass shared with SRR
            return self.features()[0]
        def run():
            x, _ = self.sample()
            with torch.no_grad():
                return self.model(x)
        return self.cached("logits", run)

    def weights(self) -> dict[str, torch.Tensor]:
        return self.cached("weights", lambda: weight_matrices(self.model))

    def init_weights(self) -> dict[str, torch.Tensor]:
        return self.cached("init_weights", lambda: weight_matrices(self.model, self.initial_state()))

    def initial_state(self) -> dict[str, torch.Tensor]:
        """``init_state``, or an error naming the cause when this context was built without it."""
        if self.init_state is None:
            raise RuntimeError("this context has no initial weights (init_state=None); a measure that reads them "
                               "must be registered with needs_init=True")
        return self.init_state

    def path_weights(self) -> dict[str, torch.Tensor]:
        """The matrices of the spectral products and sums (``path_weight_matrices`` under options.shared_weights)."""
        # the option is in the key (and in the keys of everything computed from these matrices) because a cache
        # may be shared between contexts of other options (benchmark/experiments/sensitivity.py does so)
        shared = self.options.shared_weights
        return self.cached(f"path_weights(shared={shared})", lambda: path_weight_matrices(self.model, None, shared))

    def init_path_weights(self) -> dict[str, torch.Tensor]:
        shared = self.options.shared_weights
        return self.cached(f"init_path_weights(shared={shared})",
                           lambda: path_weight_matrices(self.model, self.initial_state(), shared))

    def generator(self, salt: int = 0) -> torch.Generator:
        """A fresh generator seeded from the options' seed, so every measure is reproducible on its own."""
        return torch.Generator().manual_seed(self.options.seed * 1_000_003 + salt)
