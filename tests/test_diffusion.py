"""mmtx.diffusion and mmtx.layers.conditioning: schedules, losses, samplers, guidance.

The samplers are judged on a 2-D toy: 8 Gaussians (std 0.05) on a circle of radius 2, learned
by a small class-conditional MLP with each objective in a few hundred steps. A sample is "on
its mode" when it lies within 0.3 (6 std; adjacent modes are 1.53 apart) of its class's centre.
"""

import math

import pytest
import torch
import torch.nn as nn

from mmtx.diffusion import (
    DDPM,
    ClassifierFreeGuidance,
    DDIMSampler,
    FlowMatching,
    cosine_betas,
    create_objective,
    create_sampler,
    linear_betas,
    sample,
)
from mmtx.diffusion.samplers import flow_times
from mmtx.layers.conditioning import (
    LabelEmbedding,
    TimestepEmbedding,
    modulate,
    timestep_frequencies,
)
from mmtx.layers.position import sinusoidal_encoding
from mmtx.models.conditioning import Conditioner

pytestmark = pytest.mark.usefixtures("single_thread")

NUM_MODES, STD, RADIUS = 8, 0.05, 0.3
_ANGLES = torch.arange(NUM_MODES) * (2 * math.pi / NUM_MODES)
MODES = 2.0 * torch.stack([_ANGLES.cos(), _ANGLES.sin()], dim=1)  # (8, 2)


def toy_batch(n: int, generator: torch.Generator):
    k = torch.randint(0, NUM_MODES, (n,), generator=generator)
    return MODES[k] + STD * torch.randn(n, 2, generator=generator), k


class ToyDenoiser(nn.Module):
    """x (B, 2), t, label (B,) -> (B, 2); t and label enter by adaLN-style modulation."""

    def __init__(self, dim: int = 128, depth: int = 2):
        super().__init__()
        # t + y, each label made the null class with probability 0.2 in training
        self.cond = Conditioner(dim, NUM_MODES, cond_drop=0.2, freq_dim=64)
        self.inp = nn.Linear(2, dim)
        self.norms = nn.ModuleList([nn.LayerNorm(dim, elementwise_affine=False)
                                    for _ in range(depth)])
        self.ada = nn.ModuleList([nn.Linear(dim, 2 * dim) for _ in range(depth)])
        self.mlps = nn.ModuleList([nn.Sequential(nn.Linear(dim, dim), nn.SiLU(),
                                                 nn.Linear(dim, dim)) for _ in range(depth)])
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2))

    def forward(self, x, t, y):
        c = nn.functional.silu(self.cond(t, y, batch=x.shape[0])[0])  # (B, dim)
        h = self.inp(x)  # (B, dim)
        for norm, ada, mlp in zip(self.norms, self.ada, self.mlps):
            shift, scale = ada(c).chunk(2, dim=-1)  # (B, dim) each
            h = h + mlp(modulate(norm(h)[:, None], shift, scale)[:, 0])  # as 1-token sequences
        return self.out(h)


def train_toy(objective, steps: int = 400, seed: int = 0, unconditional: bool = False):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures are built before the single_thread fixture
    try:
        return _train_toy(objective, steps, seed, unconditional)
    finally:
        torch.set_num_threads(threads)


def _train_toy(objective, steps: int, seed: int, unconditional: bool):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = ToyDenoiser()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        x, y = toy_batch(256, g)
        if unconditional:
            y = torch.full_like(y, NUM_MODES)  # every label is the null class
        loss, per_sample = objective.loss(model, x, y, generator=g)
        assert per_sample.shape == (256,)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@pytest.fixture(scope="module")
def flow_model():
    objective = FlowMatching("logit_normal")
    return objective, train_toy(objective)


@pytest.fixture(scope="module")
def ddpm_model():
    objective = DDPM(1000, "linear")
    return objective, train_toy(objective)


def on_own_mode(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples within RADIUS of their label's mode."""
    return ((x - MODES[labels]).norm(dim=-1) < RADIUS).float().mean().item()


LABELS = torch.arange(400) % NUM_MODES  # 50 samples per mode


# ---- samplers on the toy distribution ----


@pytest.mark.parametrize("sampler, kw", [("euler", dict(steps=50)), ("heun", dict(steps=25)),
                                         ("euler", dict(steps=50, shift=3.0))])
def test_flow_samplers_land_on_modes(flow_model, sampler, kw):
    objective, model = flow_model
    x = sample(model, (400, 2), LABELS, objective=objective, sampler=sampler, seed=0, **kw)
    assert x.shape == (400, 2) and x.dtype == torch.float32
    assert on_own_mode(x, LABELS) >= 0.9


def test_flow_times_shift_towards_the_noise():
    even = flow_times(4)
    assert torch.allclose(even, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = flow_times(4, 3.0)  # 3u / (1 + 2u): u = 0.5 -> 0.75
    assert torch.allclose(shifted, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))
    assert (shifted.diff() < 0).all() and (shifted >= even).all()


@pytest.mark.parametrize("sampler, kw", [("ddpm", dict(steps=100)), ("ddim", dict(steps=50)),
                                         ("ddim", dict(steps=50, eta=1.0))])
def test_ddpm_samplers_land_on_modes(ddpm_model, sampler, kw):
    objective, model = ddpm_model
    x = sample(model, (400, 2), LABELS, objective=objective, sampler=sampler, seed=0, **kw)
    assert on_own_mode(x, LABELS) >= 0.9


def test_guided_samples_land_on_their_class(ddpm_model):
    objective, model = ddpm_model
    x = sample(model, (400, 2), LABELS, objective=objective, sampler="ddim", steps=25,
               cfg_scale=3.0, null_cond=NUM_MODES, seed=0)
    assert on_own_mode(x, LABELS) >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("name, samplers", [("flow", ["euler", "heun"]),
                                            ("ddpm", ["ddpm", "ddim"])])
def test_unconditional_samples_land_on_modes(name, samplers):
    """Unconditional (null label) samples need ~2,000 steps to be sharp: slow."""
    objective = create_objective(name)
    model = train_toy(objective, steps=2000, unconditional=True)
    null = torch.full((400,), NUM_MODES)
    for sampler in samplers:
        x = sample(model, (400, 2), null, objective=objective, sampler=sampler, seed=0)
        dist = torch.cdist(x, MODES)  # (400, 8)
        assert (dist.min(dim=1).values < RADIUS).float().mean().item() >= 0.9, sampler
        assert torch.bincount(dist.argmin(1), minlength=NUM_MODES).min() >= 20, sampler


# ---- determinism ----


def test_samplers_are_deterministic_per_seed(ddpm_model, flow_model):
    for objective, model, name in [(*ddpm_model, "ddpm"), (*ddpm_model, "ddim"),
                                   (*flow_model, "euler")]:
        kw = dict(objective=objective, sampler=name, steps=10, eta=1.0) if name == "ddim" \
            else dict(objective=objective, sampler=name, steps=10)
        a = sample(model, (16, 2), LABELS[:16], seed=3, **kw)
        b = sample(model, (16, 2), LABELS[:16], seed=3, **kw)
        c = sample(model, (16, 2), LABELS[:16], seed=4, **kw)
        assert torch.equal(a, b), name
        assert not torch.allclose(a, c), name


def test_ddim_eta0_is_deterministic_given_the_noise(ddpm_model):
    objective, model = ddpm_model
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    run = DDIMSampler(objective, steps=10, eta=0.0)
    a = run(model, noise, LABELS[:16], torch.Generator().manual_seed(1))
    b = run(model, noise, LABELS[:16], torch.Generator().manual_seed(2))
    assert torch.equal(a, b)  # no randomness after the starting noise
    stochastic = DDIMSampler(objective, steps=10, eta=1.0)
    c = stochastic(model, noise, LABELS[:16], torch.Generator().manual_seed(1))
    d = stochastic(model, noise, LABELS[:16], torch.Generator().manual_seed(2))
    assert not torch.allclose(c, d)


def test_bf16_autocast_and_progress_run(flow_model):
    objective, model = flow_model
    full = sample(model, (32, 2), LABELS[:32], objective=objective, steps=20, seed=0)
    half = sample(model, (32, 2), LABELS[:32], objective=objective, steps=20, seed=0,
                  autocast=True, progress=True)
    assert half.dtype == torch.float32
    assert (half - full).abs().max() < 0.2  # bf16 model calls, float32 state


# ---- classifier-free guidance ----


class CountingModel:
    """model_fn whose output depends on cond, recording the batch of every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond):
        self.calls.append(x.shape[0])
        return x * 2 + cond[:, None].float() + t[:, None]


def test_cfg_scale_one_is_the_conditional_prediction_in_one_call():
    model = CountingModel()
    x, t, y = torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 3])
    out = ClassifierFreeGuidance(model, null_cond=8, cfg_scale=1.0)(x, t, y)
    assert torch.equal(out, model(x, t, y))
    assert model.calls == [4, 4]  # one call for the guided model, one for the reference


def test_cfg_mixes_one_batched_forward():
    model = CountingModel()
    x, t, y = torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 3])
    out = ClassifierFreeGuidance(model, null_cond=8, cfg_scale=3.0)(x, t, y)
    assert model.calls == [8]  # cond and null concatenated: one forward of 2B
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 8))
    torch.testing.assert_close(out, uncond + 3.0 * (cond - uncond))
    zero = ClassifierFreeGuidance(model, null_cond=8, cfg_scale=0.0)(x, t, y)
    torch.testing.assert_close(zero, uncond)


def test_cfg_with_a_dict_condition():
    def model(x, t, cond):
        return x + cond["emb"].sum(-1, keepdim=True) * cond["mask"][:, :1]

    x, t = torch.randn(3, 2), torch.rand(3)
    cond = {"emb": torch.randn(3, 4), "mask": torch.ones(3, 2)}
    null = {"emb": torch.zeros(4), "mask": 1.0}
    out = ClassifierFreeGuidance(model, null, 2.0)(x, t, cond)
    uncond = x
    torch.testing.assert_close(out, uncond + 2.0 * (model(x, t, cond) - uncond))


# ---- schedules, paths and losses against hand-computed values ----


def test_linear_betas_endpoints():
    betas = linear_betas(1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    # the chain ends near pure noise: prod(1 - beta) = 4.036e-5 (computed in plain Python)
    assert DDPM(1000).alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-3)
    assert linear_betas(100)[-1].item() == pytest.approx(0.2)  # scaled by 1000 / T
    assert linear_betas(10).max().item() == pytest.approx(0.999)  # clipped below T = 50


def test_cosine_schedule_values():
    # alphabar(t) = cos((t + s)/(1 + s) * pi/2)^2 / cos(s/(1 + s) * pi/2)^2, s = 0.008
    ddpm = DDPM(1000, "cosine")
    ab = ddpm.alphas_cumprod  # step i holds alphabar((i + 1) / T)
    assert ab[499].item() == pytest.approx(0.493844, abs=1e-5)
    assert ab[249].item() == pytest.approx(0.847012, abs=1e-5)
    betas = cosine_betas(1000)
    assert betas.max().item() == pytest.approx(0.999)  # clipped at the end
    assert (betas > 0).all()


def test_q_sample_and_flow_path_endpoints():
    x0, noise = torch.randn(3, 4), torch.randn(3, 4)
    flow = FlowMatching()
    torch.testing.assert_close(flow.interpolate(x0, noise, torch.zeros(3)), x0)
    torch.testing.assert_close(flow.interpolate(x0, noise, torch.ones(3)), noise)
    torch.testing.assert_close(flow.target(x0, noise), noise - x0)
    ddpm = DDPM(100)
    t = torch.tensor([0, 50, 90])
    ab = ddpm.alphas_cumprod[t].float()[:, None]
    expected = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    torch.testing.assert_close(ddpm.q_sample(x0, t, noise), expected)
    torch.testing.assert_close(ddpm.predict_x0(ddpm.q_sample(x0, t, noise), t, noise), x0)


def test_loss_of_a_perfect_model_is_zero():
    x0 = torch.randn(5, 3, 4, 4)
    noise = torch.randn_like(x0)
    flow = FlowMatching("uniform")
    loss, per = flow.loss(lambda x, t, c: noise - x0, x0, noise=noise)
    assert loss.item() == 0 and per.shape == (5,)
    loss, per = DDPM(50).loss(lambda x, t, c: noise, x0, noise=noise)
    assert loss.item() == 0 and per.shape == (5,)


def test_timestep_sampling():
    g = torch.Generator().manual_seed(0)
    t = FlowMatching("logit_normal").sample_t(20000, generator=g)
    assert 0 < t.min() and t.max() < 1
    assert t.median().item() == pytest.approx(0.5, abs=0.02)  # sigmoid(N(0, 1))
    shifted = FlowMatching("logit_normal", loc=1.0).sample_t(20000, generator=g)
    assert shifted.median().item() == pytest.approx(1 / (1 + math.exp(-1)), abs=0.02)
    u = FlowMatching("uniform").sample_t(20000, generator=g)
    assert u.mean().item() == pytest.approx(0.5, abs=0.01)
    steps = DDPM(7).sample_t(1000, generator=g)
    assert steps.dtype == torch.long and steps.min() == 0 and steps.max() == 6


# ---- conditioning layers ----


def test_timestep_frequencies_match_the_sinusoidal_table():
    table = sinusoidal_encoding(50, 16)
    torch.testing.assert_close(timestep_frequencies(torch.arange(50), 16), table)


def test_timestep_embedding_reads_float_and_integer_t():
    emb = TimestepEmbedding(32, freq_dim=16)
    assert emb(torch.rand(5)).shape == (5, 32)
    assert emb(torch.tensor(0.5)).shape == (1, 32)
    # a float time t is the integer step 1000 t
    torch.testing.assert_close(emb(torch.tensor([0.25, 0.5])), emb(torch.tensor([250, 500])))
    assert not torch.allclose(emb(torch.tensor([0.1])), emb(torch.tensor([0.2])), atol=1e-4)


def test_label_embedding_null_row():
    emb = LabelEmbedding(4, 8)
    labels = torch.tensor([0, 1, 2, 4])
    assert emb.null_index == 4 and emb.table.num_embeddings == 5
    torch.testing.assert_close(emb(labels), emb.table.weight[[0, 1, 2, 4]])


def test_modulate():
    x = torch.randn(2, 3, 4)
    shift, scale = torch.randn(2, 4), torch.randn(2, 4)
    out = modulate(x, shift, scale)
    torch.testing.assert_close(out[1, 2], x[1, 2] * (1 + scale[1]) + shift[1])
    torch.testing.assert_close(modulate(x, torch.zeros(2, 4), torch.zeros(2, 4)), x)


# ---- factories and errors ----


def test_factories():
    assert isinstance(create_objective(), FlowMatching)
    ddpm = create_objective("ddpm", num_steps=100, schedule="cosine")
    assert isinstance(ddpm, DDPM) and ddpm.num_steps == 100
    assert create_sampler("heun", steps=7).steps == 7
    assert create_sampler("ddpm", ddpm).steps == 100  # all steps by default
    assert create_sampler("ddim", ddpm, steps=10).timesteps[:2] == [99, 88]
    assert create_sampler("ddim", ddpm, steps=10).timesteps[-1] == 0
    assert create_sampler("ddim", ddpm, steps=1).timesteps == [99]  # from noise, not step 0
    x = sample(lambda x, t, c: torch.zeros_like(x), (2, 3, 4, 4), sampler="ddim", steps=5)
    assert x.shape == (2, 3, 4, 4)


@pytest.mark.parametrize("call, words", [
    (lambda: create_objective("gan"), ["objective", "flow", "'gan'"]),
    (lambda: create_objective("flow", num_steps=10), ["num_steps", "timestep_sampling"]),
    (lambda: FlowMatching("beta"), ["timestep_sampling", "'beta'"]),
    (lambda: DDPM(100, "quadratic"), ["schedule", "'quadratic'"]),
    (lambda: DDPM(1), ["num_steps", "1"]),
    (lambda: create_sampler("plms"), ["sampler", "euler", "'plms'"]),
    (lambda: create_sampler("euler", DDPM()), ["euler", "FlowMatching", "DDPM"]),
    (lambda: create_sampler("ddim"), ["ddim", "objective", "None"]),
    (lambda: create_sampler("euler", steps=0), ["steps", "0"]),
    (lambda: create_sampler("euler", eta=0.5), ["eta", "steps"]),
    (lambda: create_sampler("heun", shift=0.0), ["shift", "> 0", "0.0"]),
    (lambda: create_sampler("ddim", DDPM(10), steps=20), ["steps", "10", "20"]),
    (lambda: create_sampler("ddim", DDPM(10), eta=-1.0), ["eta", "-1"]),
    (lambda: sample(CountingModel(), (2, 2), torch.zeros(2), cfg_scale=2.0),
     ["cfg_scale", "null_cond", "None"]),
    (lambda: sample(CountingModel(), (2, 2), noise=torch.zeros(3, 2)),
     ["noise", "(2, 2)", "(3, 2)"]),
    (lambda: ClassifierFreeGuidance(CountingModel(), 8, -1.0), ["cfg_scale", "-1"]),
    (lambda: ClassifierFreeGuidance(CountingModel(), torch.zeros(5), 2.0)(
        torch.zeros(2, 2), torch.zeros(2), torch.zeros(2)), ["null_cond", "(5,)"]),
    (lambda: DDPM(10).q_sample(torch.zeros(2, 2), torch.tensor([0, 10]), torch.zeros(2, 2)),
     ["t", "9", "10"]),
    (lambda: LabelEmbedding(4, 8)(torch.tensor([0, 5])), ["labels", "[0, 4]", "5"]),
    (lambda: LabelEmbedding(4, 8)(torch.tensor([0.5])), ["labels", "float"]),
    (lambda: TimestepEmbedding(8)(torch.zeros(2, 2)), ["t", "(2, 2)"]),
])
def test_errors_name_the_argument(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))
