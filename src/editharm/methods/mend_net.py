"""MEND's hypernetwork (Mitchell et al., ICLR 2022): a fine-tuning gradient's rank-one factors in, an edit out.

For an inner weight W (out × in) and a loss L, the gradient is ∇W = Σ_t δ_t x_tᵀ with x_t the layer input and
δ_t = ∂L/∂out_t at token t. The editor g maps each pair, normalised, to (x̃_t, δ̃_t), and the update is

    ΔW = ∓ α · Σ_t δ̃_t x̃_tᵀ          (−: `descent`, the untrained editor is a normalised gradient step)

    net = MENDNet(MENDSpec(params=[...], dims={...}, rank=64))
    dW = net.update(name, x, delta)      # (out, in); x: (T, in), delta: (T, out)

One `Editor` per weight shape, shared by the layers of that shape, each layer with its own scale/shift ("mode")
and its own learnable α. The editor has `n_hidden` + 1 blocks h ← h + max(0, (U V h + b) ⊙ s_l + t_l), U = 0
at init so that g starts as the identity, V ~ N(0, 1) (`v_init="randn"`). That is what MEND's code does
(`nn.py`/EasyEdit `local_nn.py`, `LRLinear` with `init="id"`): `IDMLP` passes `relu=idx < n_hidden`, but
`LRLinear` never stores or reads that argument and clamps every block's pre-activation at 0 (`relu="all"`).
Options, not the reference: `relu="hidden"` (the last block linear) and `v_init="xavier"` (Xavier-uniform V,
still U = 0 and the residual; not MEND's `init="xavier"`, which drops both) are what networks saved before
these fields existed were built with; their spec files lack the fields and load with those values.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from editharm.errors import ConfigError

NORM_EPS = 1e-7
SPEC_FILE = "mend.json"
V_INITS = ("randn", "xavier")
RELUS = ("all", "hidden")
LEGACY = {"v_init": "xavier", "relu": "hidden"}
"""What a saved spec without these fields was built with (before they existed)."""
WEIGHTS_FILE = "mend.safetensors"


class RunningNorm(nn.Module):
    """Per-dimension running mean and (unbiased) variance of every row seen in training mode (Welford, merged
    batch-wise with Chan et al.'s update); forward returns (x − μ)/(σ + 1e-7). Before two rows were seen it
    leaves x unscaled (μ = 0, σ = 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        n, mean = x.shape[0], x.mean(0)
        if n == 0:
            return
        total = self.count + n
        diff = mean - self.mean
        self.m2 += ((x - mean) ** 2).sum(0) + diff ** 2 * self.count * n / total
        self.mean += diff * n / total
        self.count.copy_(total)

    def std(self) -> torch.Tensor:
        if self.count < 2:
            return torch.ones_like(self.m2)
        return (self.m2 / (self.count - 1)).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(x)
        return (x - self.mean.to(x.dtype)) / (self.std().to(x.dtype) + NORM_EPS)


def init_V(rank: int, dim: int, how: str) -> torch.Tensor:
    """V (rank × dim) at init. `randn`: N(0, 1) entries, unscaled, as MEND's `LRLinear` (`torch.randn`); with U = 0
    and Adam's step on U of about `lr` per entry, V's scale sets how fast g moves away from the identity.
    `xavier`: Xavier-uniform (std √(2/(rank + dim)), e.g. 0.014 at rank 1920 of 8,000), our former default."""
    if how == "randn":
        return torch.randn(rank, dim)
    if how == "xavier":
        return nn.init.xavier_uniform_(torch.empty(rank, dim))
    raise ConfigError(f"method.v_init={how!r} is not valid; choose one of: {', '.join(V_INITS)}")


class LowRankBlock(nn.Module):
    """h ← h + act((U V h + b) ⊙ s_mode + t_mode), U = 0 at init (the identity), V from `init_V`; act = max(0, ·)
    when `relu`, else the identity."""

    def __init__(self, dim: int, rank: int, n_modes: int, relu: bool, v_init: str = "randn"):
        super().__init__()
        self.U = nn.Parameter(torch.zeros(dim, rank))
        self.V = nn.Parameter(init_V(rank, dim, v_init))
        self.b = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.ones(n_modes, dim))
        self.shift = nn.Parameter(torch.zeros(n_modes, dim))
        self.relu = relu

    def forward(self, h: torch.Tensor, mode: int) -> torch.Tensor:
        pre = (h @ self.V.T @ self.U.T + self.b) * self.scale[mode] + self.shift[mode]
        return h + (pre.clamp_min(0) if self.relu else pre)


class Editor(nn.Module):
    """g for one weight shape: normalise x and δ, run the blocks on [x̂; δ̂], split back into (x̃, δ̃)."""

    def __init__(self, d_in: int, d_out: int, rank: int, n_hidden: int, n_modes: int, norm: bool,
                 v_init: str = "randn", relu: str = "all"):
        super().__init__()
        if relu not in RELUS:
            raise ConfigError(f"method.relu={relu!r} is not valid; choose one of: {', '.join(RELUS)}")
        self.d_in = d_in
        self.norm_x = RunningNorm(d_in) if norm else None
        self.norm_delta = RunningNorm(d_out) if norm else None
        self.blocks = nn.ModuleList(LowRankBlock(d_in + d_out, rank, n_modes, relu=relu == "all" or i < n_hidden,
                                                 v_init=v_init) for i in range(n_hidden + 1))

    def forward(self, x: torch.Tensor, delta: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.norm_x is not None:
            x, delta = self.norm_x(x), self.norm_delta(delta)
        h = torch.cat([x, delta], -1)
        for block in self.blocks:
            h = block(h, mode)
        return h[:, :self.d_in], h[:, self.d_in:]


@dataclass
class MENDSpec:
    """What a hypernetwork was built for and how: saved beside its weights, checked before it edits."""

    params: list[str]
    """Inner parameter names, in the order of `alpha`."""
    dims: dict[str, list[int]]
    """Per parameter, [d_in, d_out] of the (out, in) weight view (GPT-2 Conv1D already transposed)."""
    rank: int = 1920
    n_hidden: int = 1
    edit_lr: float = 1e-4
    """Initial α of every parameter."""
    descent: bool = True
    """Subtract the update (MEND's code adds it and lets g and α learn the sign)."""
    norm: bool = True
    v_init: str = "randn"
    """V at init: `randn` (N(0, 1), MEND's `LRLinear`) or `xavier` (ours before; see `init_V`)."""
    relu: str = "all"
    """Blocks with a ReLU: `all` (MEND's `LRLinear` clamps every block) or `hidden` (the last block linear)."""
    model_identity: str = ""
    meta: dict = field(default_factory=dict)
    """Free-form provenance (training run, data sizes), saved as given."""

    def shape_key(self, param: str) -> str:
        d_in, d_out = self.dims[param]
        return f"{d_out}x{d_in}"


class MENDNet(nn.Module):
    """Editors keyed by weight shape, a mode index per parameter within its shape, and α per parameter."""

    def __init__(self, spec: MENDSpec):
        super().__init__()
        self.spec = spec
        self.modes: dict[str, int] = {}
        shapes: dict[str, list[str]] = {}
        for p in spec.params:
            shapes.setdefault(spec.shape_key(p), []).append(p)
            self.modes[p] = len(shapes[spec.shape_key(p)]) - 1
        self.editors = nn.ModuleDict({
            key: Editor(*spec.dims[members[0]], spec.rank, spec.n_hidden, len(members), spec.norm, spec.v_init,
                        spec.relu)
            for key, members in shapes.items()})
        self.alpha = nn.Parameter(torch.full((len(spec.params),), float(spec.edit_lr)))

    def update(self, param: str, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """ΔW (out, in) of `param` from its factors: rows of x (T, in) and δ (T, out)."""
        x_t, d_t = self.editors[self.spec.shape_key(param)](x.float(), delta.float(), self.modes[param])
        sign = -1.0 if self.spec.descent else 1.0
        return sign * self.alpha[self.spec.params.index(param)] * (d_t.T @ x_t)

    def save(self, folder: Path) -> Path:
        """`mend.safetensors` + `mend.json` in `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE))
        (folder / SPEC_FILE).write_text(json.dumps(asdict(self.spec), indent=1), encoding="utf-8")
        return folder

    @staticmethod
    def read_spec(folder: Path) -> MENDSpec:
        """The spec saved in `folder` (one saved before v_init/relu existed reads as built: `LEGACY`)."""
        fields = json.loads((Path(folder) / SPEC_FILE).read_text(encoding="utf-8"))
        return MENDSpec(**{**LEGACY, **fields})

    @classmethod
    def load(cls, folder: Path) -> "MENDNet":
        folder = Path(folder)
        if not (folder / SPEC_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise ConfigError(f"{folder} is not a MEND hypernetwork (it needs {SPEC_FILE} and {WEIGHTS_FILE})")
        net = cls(cls.read_spec(folder))
        net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        return net.eval()
