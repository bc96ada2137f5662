"""A diffusion network trained on integer timesteps (OpenAI's ADM, the DDIM / SDEdit `Model`, a diffusers
`UNet2DModel`) behind the suite's prior signature `net(x, level) -> eps`.

The suite's DeqIR method calls its prior with the noise level sqrt(alpha_bar_t) of its training schedule
(`ir_lightning.methods.deqir`: `net(x, alpha_bars[t].sqrt())`), so a model that was trained on the integer step t
needs that step back. `TimestepPrior` holds the schedule the model was trained with and maps each level to the
step whose sqrt(alpha_bar) it is: exactly, because the chain only visits levels of that same schedule (in eval
mode a level that is not one of them, beyond `tolerance`, is refused; in training mode, where the suite draws
levels between neighbouring steps, a level goes to the nearest step, so fine-tuning trains the prior on its own
integer steps). It keeps the first `eps_channels` output channels: ADM's
learned-sigma models return eps and the variance interpolation (6 channels), of which the chain uses eps.

Schedule: the official priors' linear betas 1e-4 .. 0.02 over T = 1000, alpha_bar_t = prod_{s <= t} (1 - beta_s)
for t = 0 .. T - 1 (the indexing of the official code and of DeqIR's `train_schedule`); the DeqIR method must be
given the same `train_schedule`.
"""

from __future__ import annotations

from torch import Tensor, nn

from ir_lightning.diffusion.schedules import gammas_from_betas, make_betas


class TimestepPrior(nn.Module):
    """`forward(x, level) = prior(x, t(level))[:, :eps_channels]`, t the step of the schedule whose sqrt(alpha_bar)
    is `level`.

    Args:
        prior: the network, called `prior(x, t)` with t a float tensor of integer steps, shape (B,).
        schedule: the beta schedule the prior was trained with ("linear", "quad", "cosine", "const").
        n_steps: its number of steps T (1000).
        linear_start, linear_end: its first and last beta (1e-4, 0.02).
        eps_channels: output channels that are eps (3; ADM's learned-sigma models return 6).
        tolerance: largest distance between a level and the schedule's nearest sqrt(alpha_bar) (1e-5: float32
            rounding of a level is about 6e-8; neighbouring levels are at least about 3e-5 apart).
        image_size: the side of the square images the prior was trained on (256 for the official priors), or None
            for a prior of any size. In eval mode an image of another size is refused: the prior's attention
            levels and its notion of a face or an object are those of that size (`ir-lightning restore` cuts
            larger images into tiles of it).
    """

    def __init__(
        self,
        prior: nn.Module,
        schedule: str = "linear",
        n_steps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 0.02,
        eps_channels: int = 3,
        tolerance: float = 1e-5,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        if eps_channels < 1:
            raise ValueError(f"TimestepPrior: eps_channels must be at least 1, got {eps_channels}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"TimestepPrior: image_size must be None or at least 1, got {image_size}")
        self.prior, self.eps_channels, self.tolerance, self.image_size = prior, eps_channels, tolerance, image_size
        # float64, kept off the buffers (no state-dict key, nothing for DDP to broadcast); moved where used
        self.levels = gammas_from_betas(make_betas(schedule, n_steps, linear_start, linear_end)).sqrt()

    def timestep(self, level: Tensor) -> Tensor:
        """The steps (int64, shape (B,)) whose sqrt(alpha_bar) are `level` (shape (B,) or (B, 1))."""
        levels = self.levels if self.levels.device == level.device else self.levels.to(level.device)
        distance, step = (level.reshape(-1, 1).double() - levels[None, :]).abs().min(dim=1)
        if not self.training and bool((distance > self.tolerance).any()):
            worst = int(distance.argmax())
            raise ValueError(
                f"TimestepPrior: noise level {float(level.reshape(-1)[worst]):.8g} is not sqrt(alpha_bar) of the "
                f"prior's schedule (nearest: step {int(step[worst])}, {float(distance[worst]):.2g} away): give the "
                "method the train_schedule the prior was trained with"
            )
        return step

    def check_size(self, height: int, width: int) -> None:
        """Refuse (ValueError) an image of another size than the prior's `image_size`."""
        if self.image_size is not None and (height, width) != (self.image_size, self.image_size):
            side = self.image_size
            raise ValueError(
                f"the prior was trained on {side} x {side} images and restores that size only, got {height} x "
                f"{width}: give {side} x {side} images (crop or resize), or restore a larger one in tiles of the "
                f"prior's size (`ir-lightning restore` does it)"
            )

    def forward(self, x: Tensor, level: Tensor) -> Tensor:
        if not self.training:
            self.check_size(x.shape[-2], x.shape[-1])
        return self.prior(x, self.timestep(level).to(x.dtype))[:, : self.eps_channels]
