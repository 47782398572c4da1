"""The DDPM noise schedule of MultiBand Diffusion (AudioCraft's ``NoiseSchedule``).

Betas follow the power schedule ``beta_t = (beta_0^(1/p) + t / (N - 1) * (beta_1^(1/p) -
beta_0^(1/p)))^p`` for ``t = 0..N-1``; ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``. Training noises
``x_0`` to ``x_t = sqrt(alpha_bar_t) / rescale * x_0 + sqrt(1 - alpha_bar_t) * noise_scale * eps``
and the model predicts ``eps``. Sampling walks a subsampled chain of steps as AudioCraft's
``generate_subsampled`` does (the betas of the sub-chain recomputed from its ``alpha_bar``,
``beta_tilde`` variance, no noise on the last step, clipping); the expressions are AudioCraft's,
term for term, so that its released weights sample as they do there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ModelFn = Callable[[torch.Tensor, int], torch.Tensor]  # (x_t, step) -> predicted noise
NoiseFn = Callable[[torch.Tensor], torch.Tensor]  # like torch.randn_like


class NoiseSchedule:
    """Betas and the forward/reverse processes; arguments are AudioCraft's ``schedule`` config.

    Only the ``power`` repartition, one schedule shared by all channels (``n_bands`` None) and
    ``variance`` ``beta``/``beta_tilde``/``none`` of the full chain are defined there; the
    subsampled sampler always uses ``beta_tilde``. ``variable_step_batch`` (a solver setting)
    says whether each item of a training batch draws its own step.
    """

    def __init__(
        self,
        beta_t0: float = 1e-4,
        beta_t1: float = 0.02,
        num_steps: int = 1000,
        variance: str = "beta",
        clip: float = 5.0,
        rescale: float = 1.0,
        beta_exp: float = 1.0,
        repartition: str = "power",
        n_bands: int | None = None,
        noise_scale: float = 1.0,
        variable_step_batch: bool = True,
    ) -> None:
        if repartition != "power":
            raise ValueError(f"only the 'power' noise schedule exists, got {repartition!r}")
        if n_bands is not None:
            raise ValueError("per-band noise schedules (schedule.n_bands) are not supported")
        if variance not in ("beta", "beta_tilde", "none"):
            raise ValueError(f"variance must be beta, beta_tilde or none, got {variance!r}")
        if num_steps < 2:
            raise ValueError(f"num_steps must be at least 2, got {num_steps}")
        self.beta_t0, self.beta_t1, self.beta_exp = beta_t0, beta_t1, beta_exp
        self.num_steps = num_steps
        self.variance = variance
        self.clip = clip
        self.rescale = rescale
        self.noise_scale = noise_scale
        self.variable_step_batch = variable_step_batch
        self.betas = (
            torch.linspace(
                beta_t0 ** (1 / beta_exp), beta_t1 ** (1 / beta_exp), num_steps, dtype=torch.float
            )
            ** beta_exp
        )

    def alpha_bar(self, step: int | None = None) -> torch.Tensor:
        """``alpha_bar`` at ``step`` (a 0-d tensor), or for every step when None."""
        if step is None:
            return (1 - self.betas).cumprod(dim=-1)
        return (1 - self.betas[: step + 1]).prod()

    def alpha_bar_of(self, steps: torch.Tensor) -> torch.Tensor:
        """``alpha_bar`` of a tensor of steps, shaped ``(len(steps), 1, 1)``."""
        return self.alpha_bar().to(steps.device)[steps].view(-1, 1, 1)

    def noisy(self, x: torch.Tensor, steps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t`` of the clean ``x`` (B, C, T) at ``steps`` (B,) for the Gaussian ``noise``."""
        alpha_bar = self.alpha_bar_of(steps).to(x)
        return (alpha_bar.sqrt() / self.rescale) * x + (
            1 - alpha_bar
        ).sqrt() * noise * self.noise_scale

    def noise_from_x0(self, x: torch.Tensor, step: int, x0: torch.Tensor) -> torch.Tensor:
        """The noise that makes ``x`` the noised ``x0`` at ``step`` (:meth:`noisy` solved for it)."""
        alpha_bar = self.alpha_bar(step).to(x)
        scale = (1 - alpha_bar).sqrt() * self.noise_scale
        return (x - (alpha_bar.sqrt() / self.rescale) * x0) / scale

    def step_list(self, steps: int) -> list[int]:
        """The descending chain states a ``steps``-step sampler visits, ending with 0.

        20 steps give AudioCraft's default ``range(1000)[::-50] + [0]`` (999, 949, ..., 49, 0):
        ``steps`` states spaced ``num_steps // steps`` apart from the last one, then 0.
        """
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"steps must be in [1, {self.num_steps}], got {steps}")
        chain = list(range(self.num_steps))[:: -(self.num_steps // steps)][:steps]
        return chain if chain[-1] == 0 else [*chain, 0]

    @torch.no_grad()
    def generate_subsampled(
        self, model: ModelFn, initial: torch.Tensor, step_list: list[int], noise: NoiseFn
    ) -> torch.Tensor:
        """The reverse process from ``initial`` through the states of ``step_list`` (in the
        processed space: the caller applies the processor's ``return_sample``); ``noise`` draws
        the Gaussian noise of each step."""
        device = initial.device
        alpha_bar = self.alpha_bar(self.num_steps - 1).to(device)
        sub = self.alpha_bar()[list(reversed(step_list))]
        betas = 1 - torch.cat([sub[:1], sub[1:] / sub[:-1]])
        current = initial * self.noise_scale
        previous = current
        for idx, step in enumerate(step_list[:-1]):
            estimate = model(current, step) * self.noise_scale
            alpha = (1 - betas[-1 - idx]).to(device)
            previous = (current - (1 - alpha) / (1 - alpha_bar).sqrt() * estimate) / alpha.sqrt()
            previous_alpha_bar = self.alpha_bar(step_list[idx + 1]).to(device)
            if step == step_list[-2]:
                sigma2 = 0
                previous_alpha_bar = torch.tensor(1.0, device=device)
            else:
                sigma2 = (1 - previous_alpha_bar) / (1 - alpha_bar) * (1 - alpha)
            if sigma2 > 0:
                previous = previous + sigma2**0.5 * noise(previous) * self.noise_scale
            if self.clip:
                previous = previous.clamp(-self.clip, self.clip)
            current = previous
            alpha_bar = previous_alpha_bar
            if step == 0:
                previous = previous * self.rescale
        return previous
