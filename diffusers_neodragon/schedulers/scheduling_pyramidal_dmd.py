# SPDX-License-Identifier: Apache-2.0
"""Pyramidal flow matching scheduler (Pyramid-Flow / Neodragon), with the DMD student's one-step rule.

Pyramidal flow matching splits one rectified flow (``x = (1 - sigma) * clean + sigma * noise``) into
``stages`` pieces, each run at twice the spatial resolution of the one before. Inside a stage everything
is written in a *stage-local* sigma ``r`` that runs from 1 (the stage's start point) to 0 (its end
point), while the transformer is conditioned on a raw 0-1000 timestep that decreases across the whole
pyramid. Between stages the latent is upsampled and re-noised with spatially correlated block noise so
that it lands exactly on the next stage's start point. All of that math lives here; pipelines and
training scripts only call it.
"""

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor


@dataclass
class PyramidalDMDSchedulerOutput(BaseOutput):
    """Output of [`PyramidalDMDScheduler.step`].

    Args:
        prev_sample (`torch.Tensor`): the sample after the Euler step, in `model_output`'s dtype.
    """

    prev_sample: torch.Tensor


def _check_5d(name: str, tensor: torch.Tensor) -> None:
    if tensor.ndim != 5:
        raise ValueError(
            f"`{name}` must be a 5-D latent [batch, channels, frames, height, width], got shape {tuple(tensor.shape)}."
        )


def _per_frame(fn, video: torch.Tensor) -> torch.Tensor:
    """Apply a 4-D (image) op to every frame of a [B, C, T, H, W] latent, as the reference does."""
    b, c, t, h, w = video.shape
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    frames = fn(frames)
    return frames.reshape(b, t, c, *frames.shape[-2:]).permute(0, 2, 1, 3, 4)


def _upsample_nearest_2x(video: torch.Tensor) -> torch.Tensor:
    """Nearest 2x spatial upsample of a 5-D latent, frames untouched (the stage-jump upsample)."""
    return F.interpolate(video, scale_factor=(1, 2, 2), mode="nearest")


class PyramidalDMDScheduler(SchedulerMixin, ConfigMixin):
    """Stage-aware Euler scheduler for pyramidal flow matching, shared by inference and training.

    Two interfaces share one schedule (`set_timesteps`):

    - explicit sigmas (what the pipeline, the ONNX pipeline and training use): `euler_step` takes the sigma
      pair from `stage_sigmas`, `renoise` jumps between stages; no step index, so the same object serves
      multi-step sampling, the 1-1-1 DMD student, CUDA graphs and training.
    - diffusers' stateful loop: `for t in scheduler.timesteps: x = scheduler.step(model(x, t), t, x,
      generator=g).prev_sample`. After `set_timesteps` the walk covers the whole pyramid and `step`
      re-noises into the next stage (doubling height and width) after each stage's last step;
      `stage_index` tells the caller which stage (resolution, history clips) the next step is in.
      `set_stage(stage)` restricts the walk to one stage (no re-noise at its end).

    Args:
        num_train_timesteps (`int`, defaults to 1000): length of the global timestep axis and of each
            stage's training grid.
        stages (`int`, defaults to 3): number of pyramid stages; stage `s` runs at 1/2**(stages-1-s) of
            the full resolution.
        gamma (`float`, defaults to 1/3): within-block anti-correlation of the renoising block noise;
            must lie in (0, 1/3] so that its covariance (1 + gamma) I - gamma 11^T is positive semidefinite.
        stage_range (`list[float]`, *optional*): `stages + 1` increasing global noise levels from 0 to 1
            splitting the flow; `None` means evenly spaced (e.g. [0, 1/3, 2/3, 1]) and is written back to
            the config.
    """

    _compatibles = ["PyramidalDMDScheduler"]
    order = 1
    init_noise_sigma = 1.0  # sampling starts from unit Gaussian noise; flow matching scales no model input

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        stages: int = 3,
        gamma: float = 1 / 3,
        stage_range: list[float] | None = None,
    ):
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"`num_train_timesteps` must be a positive int, got {num_train_timesteps!r}.")
        if not isinstance(stages, int) or stages < 1:
            raise ValueError(f"`stages` must be a positive int, got {stages!r}.")
        if not 0.0 < gamma <= 1 / 3 + 1e-12:
            raise ValueError(
                f"`gamma` must lie in (0, 1/3], got {gamma}: the block-noise covariance (1 + gamma) I - gamma 11^T "
                "of a 2x2 block is only positive semidefinite for gamma <= 1/3, and gamma > 0 is needed to cancel "
                "the correlation that nearest upsampling puts into the noise."
            )
        if stage_range is None:
            stage_range = [i / stages for i in range(stages + 1)]
            self.register_to_config(stage_range=stage_range)
        stage_range = [float(x) for x in stage_range]
        if (
            len(stage_range) != stages + 1
            or stage_range[0] != 0.0
            or stage_range[-1] != 1.0
            or any(b <= a for a, b in zip(stage_range, stage_range[1:]))
        ):
            raise ValueError(
                f"`stage_range` must hold stages + 1 = {stages + 1} strictly increasing values from 0.0 to 1.0, "
                f"got {stage_range}."
            )

        n = num_train_timesteps
        # Global axis: timestep n - i at noise level (n - i) / n, i = 0 .. n-1 (i.e. 1000, 999, ..., 1).
        self.original_start_sigmas: list[float] = []
        self.start_sigmas: list[float] = []
        self.end_sigmas: list[float] = []
        self.renoise_coefficients: list[tuple[float, float] | None] = []
        for s in range(stages):
            start_idx = max(int(stage_range[s] * n), 0)
            end_idx = min(int(stage_range[s + 1] * n), n)
            original_start = (n - start_idx) / n
            self.original_start_sigmas.append(original_start)
            self.end_sigmas.append((n - end_idx) / n if end_idx < n else 0.0)
            if s == 0:
                self.start_sigmas.append(original_start)
                self.renoise_coefficients.append(None)
                continue
            # Pyramid-Flow eq. 15. The previous stage ends at a * clean + (1 - a) * noise; nearest upsampling
            # makes the noise constant over 2x2 blocks. beta * block_noise cancels that block correlation
            # (beta^2 * gamma = alpha^2 * (1 - a)^2) and alpha rescales so signal + noise coefficients sum
            # to one, which moves the start of this stage to sigma = 1 - alpha * a.
            a = 1.0 - original_start
            alpha = 1.0 / (math.sqrt(1.0 + 1.0 / gamma) * (1.0 - a) + a)
            beta = alpha * (1.0 - a) / math.sqrt(gamma)
            self.start_sigmas.append(1.0 - alpha * a)
            self.renoise_coefficients.append((alpha, beta))

        # Each stage gets a share of the global timestep axis proportional to its (corrected) flow length.
        distances = [start - end for start, end in zip(self.start_sigmas, self.end_sigmas)]
        total = sum(distances)
        bounds = [sum(distances[:s]) / total for s in range(stages)] + [1.0]
        self.timestep_ratios: list[tuple[float, float]] = [(bounds[s], bounds[s + 1]) for s in range(stages)]

        # Training grids (float32, what the model consumes); their float64 end points seed `set_timesteps`.
        self.timesteps_per_stage: list[torch.Tensor] = []
        self.sigmas_per_stage: list[torch.Tensor] = []
        self._grid_bounds: list[tuple[float, float, float, float]] = []
        local = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)[:-1]
        for r0, r1 in self.timestep_ratios:
            t_max = float(n - int(r0 * n))
            t_min = float(n - min(int(r1 * n), n - 1))
            grid = torch.linspace(t_max, t_min, n + 1, dtype=torch.float64)[:-1]
            self.timesteps_per_stage.append(grid.to(torch.float32))
            self.sigmas_per_stage.append(local.to(torch.float32))
            self._grid_bounds.append((grid[0].item(), grid[-1].item(), local[0].item(), local[-1].item()))

        self.num_inference_steps: list[int] | None = None
        self.stage_timesteps: list[torch.Tensor] | None = None
        self.stage_sigmas: list[torch.Tensor] | None = None
        self.timesteps: torch.Tensor | None = None
        self._stage: int | None = None  # the stage `set_stage` restricted the stateful walk to
        self._step_index: int | None = None

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ------------------------------------------------------------------------------------------ inference

    def _check_stage(self, stage: int, first: int = 0) -> None:
        last = self.config.stages - 1
        if isinstance(stage, bool) or not isinstance(stage, numbers.Integral) or not first <= stage <= last:
            raise ValueError(f"`stage` must be an int in [{first}, {last}], got {stage!r}.")

    def set_timesteps(
        self, num_inference_steps: int | list[int], device: str | torch.device | None = None
    ) -> None:
        """Build the per-stage schedules for sampling.

        Args:
            num_inference_steps (`int` or `list[int]`): Euler steps per stage, the same for every stage (int)
                or one int >= 1 per stage (e.g. [1, 1, 1] for the DMD student, [20, 20, 20] multi-step).
            device: where the schedules live.

        Sets `stage_timesteps[s]` (n values: the transformer's timestep input), `stage_sigmas[s]` (n + 1
        stage-local sigmas ending in 0, to pair as (sigma[i], sigma[i + 1]) in `euler_step`) and `timesteps`
        (all stages concatenated, the diffusers convention).
        """
        stages = self.config.stages
        steps = num_inference_steps
        if isinstance(steps, numbers.Integral):
            steps = [steps] * stages
        if (
            not isinstance(steps, (list, tuple))
            or len(steps) != stages
            or any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 for k in steps)
        ):
            raise ValueError(
                f"`num_inference_steps` must be an int >= 1 or a list of {stages} ints >= 1 (one per stage), "
                f"got {num_inference_steps!r}."
            )
        self.num_inference_steps = [int(k) for k in steps]
        self.stage_timesteps, self.stage_sigmas = [], []
        for stage, k in enumerate(self.num_inference_steps):
            timesteps, sigmas = self._stage_schedule(stage, k, device)
            self.stage_timesteps.append(timesteps)
            self.stage_sigmas.append(sigmas)
        self.timesteps = torch.cat(self.stage_timesteps)
        self._stage, self._step_index = None, None

    def _stage_schedule(self, stage: int, k: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The k-step schedule of one stage: k timesteps and k + 1 stage-local sigmas ending in 0 (float32)."""
        t_first, t_last, sigma_first, sigma_last = self._grid_bounds[stage]
        timesteps = torch.linspace(t_first, t_last, k, dtype=torch.float64)
        sigmas = torch.linspace(sigma_first, sigma_last, k, dtype=torch.float64)
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        return timesteps.to(device=device, dtype=torch.float32), sigmas.to(device=device, dtype=torch.float32)

    @classmethod
    def _get_compatibles(cls):
        """diffusers resolves `_compatibles` in its own namespace only, where this class is not: add it."""
        found = {c.__name__: c for c in super()._get_compatibles()}
        found.setdefault(cls.__name__, cls)
        return list(found.values())

    # ----------------------------------------------------------------- diffusers' stateful interface

    def set_stage(self, stage: int) -> None:
        """Restrict the stateful walk (`timesteps`, `step`) to one stage of the current schedule; the caller
        re-noises between stages with `renoise`. `set_timesteps` goes back to the whole pyramid."""
        if self.stage_timesteps is None:
            raise ValueError("Call `set_timesteps` before `set_stage`.")
        self._check_stage(stage)
        self._stage, self._step_index = stage, None
        self.timesteps = self.stage_timesteps[stage]

    @property
    def step_index(self) -> int | None:
        """Index into `timesteps` of the next `step` (None before the first)."""
        return self._step_index

    def _stage_and_index(self, step_index: int) -> tuple[int, int]:
        if self._stage is not None:
            return self._stage, step_index
        for stage, count in enumerate(self.num_inference_steps):
            if step_index < count:
                return stage, step_index
            step_index -= count
        raise ValueError("`step` was called more times than there are `timesteps`; call `set_timesteps` again.")

    @property
    def stage_index(self) -> int | None:
        """The pyramid stage the next `step` is in (None before `set_timesteps`)."""
        if self.stage_timesteps is None:
            return None
        if self._step_index is None:
            return self._stage if self._stage is not None else 0
        if self._step_index >= len(self.timesteps):
            return self._stage if self._stage is not None else self.config.stages - 1
        return self._stage_and_index(self._step_index)[0]

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Flow matching feeds the sample unscaled (diffusers' interface)."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> PyramidalDMDSchedulerOutput | tuple:
        """diffusers' stateful step: the Euler step at `timestep` (the next of `timesteps`), then, after the last
        step of a stage when walking the whole pyramid, the re-noise into the next stage (drawn from `generator`).

        The first call locates `timestep` in `timesteps`; later calls advance one step each, as diffusers'
        schedulers do. The Euler arithmetic is `euler_step`'s, with the stage-local sigmas of `stage_sigmas`.
        """
        if self.stage_timesteps is None:
            raise ValueError("Call `set_timesteps` before `step`.")
        if self._step_index is None:
            t = torch.as_tensor(timestep, dtype=torch.float32).to(self.timesteps.device).reshape(-1)[0]
            matches = (self.timesteps == t).nonzero()
            if len(matches) == 0:
                raise ValueError(f"`timestep` {float(t)} is not one of `timesteps` {self.timesteps.tolist()}.")
            self._step_index = int(matches[0])
        stage, i = self._stage_and_index(self._step_index)
        sigmas = self.stage_sigmas[stage]
        prev_sample = self.euler_step(model_output, sample, sigmas[i], sigmas[i + 1]).prev_sample
        self._step_index += 1
        if self._stage is None and i + 1 == self.num_inference_steps[stage] and stage + 1 < self.config.stages:
            prev_sample = self.renoise(prev_sample, stage + 1, generator=generator)
        if not return_dict:
            return (prev_sample,)
        return PyramidalDMDSchedulerOutput(prev_sample=prev_sample)

    # --------------------------------------------------------------------------- explicit sigmas

    @staticmethod
    def _broadcast(value: float | torch.Tensor, like: torch.Tensor, name: str) -> float | torch.Tensor:
        """A python float, a 0-d tensor, or a per-sample [B] tensor shaped to broadcast over `like`."""
        if not torch.is_tensor(value):
            return float(value)
        value = value.to(device=like.device, dtype=torch.float32)
        if value.ndim == 0:
            return value
        if value.ndim == 1 and value.shape[0] in (1, like.shape[0]):
            return value.reshape(-1, *([1] * (like.ndim - 1)))
        raise ValueError(
            f"`{name}` must be a float, a 0-d tensor or a 1-d tensor of batch size {like.shape[0]}, "
            f"got shape {tuple(value.shape)}."
        )

    def euler_step(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        sigma: float | torch.Tensor,
        sigma_next: float | torch.Tensor,
        return_dict: bool = True,
    ) -> PyramidalDMDSchedulerOutput | tuple:
        """One Euler step of the stage-local flow: x_next = x + (sigma_next - sigma) * v.

        The arithmetic is done in float32 (low-precision latents drift otherwise) and the result is cast to
        `model_output`'s dtype, as in the reference. `sigma`/`sigma_next` are stage-local (from
        `stage_sigmas`) and may be per-sample [B] tensors. (diffusers' `step(model_output, timestep, sample)` is
        the stateful form of this.)
        """
        delta = self._broadcast(sigma_next, sample, "sigma_next") - self._broadcast(sigma, sample, "sigma")
        prev_sample = (sample.float() + delta * model_output.float()).to(model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return PyramidalDMDSchedulerOutput(prev_sample=prev_sample)

    def block_noise(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | list[torch.Generator] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Noise whose every 2x2 spatial block is N(0, (1 + gamma) I - gamma 11^T), independent elsewhere.

        Closed form of the reference's per-block multivariate-normal loop: with z ~ N(0, I) and m its 2x2
        block mean (broadcast back), sqrt(1 + gamma) (z - m) + sqrt(1 - 3 gamma) m has exactly that
        covariance (the second term vanishes at gamma = 1/3, where block sums are exactly zero). Drawn in
        float32 so a seed gives the same realisation whatever `dtype` is requested.
        """
        if len(shape) != 5 or shape[-2] % 2 or shape[-1] % 2:
            raise ValueError(f"`shape` must be 5-D [B, C, T, H, W] with even H and W, got {tuple(shape)}.")
        if isinstance(generator, list) and len(generator) not in (1, shape[0]):
            raise ValueError(f"Got {len(generator)} generators for a batch of {shape[0]}; pass one per sample.")
        gamma = self.config.gamma
        b, c, t, h, w = shape
        device = torch.device(device or "cpu")
        z = randn_tensor(tuple(shape), generator=generator, device=device, dtype=torch.float32)
        mean = z.reshape(b, c, t, h // 2, 2, w // 2, 2).mean(dim=(4, 6), keepdim=True)
        mean = mean.expand(b, c, t, h // 2, 2, w // 2, 2).reshape(shape)
        noise = math.sqrt(1.0 + gamma) * (z - mean)
        mean_scale = math.sqrt(max(1.0 - 3.0 * gamma, 0.0))
        if mean_scale > 0.0:
            noise = noise + mean_scale * mean
        return noise.to(dtype or torch.float32)

    def renoise(
        self,
        sample: torch.Tensor,
        stage: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Jump from the end of stage `stage - 1` to the start of `stage`: alpha * up2(x) + beta * block noise."""
        self._check_stage(stage, first=1)
        _check_5d("sample", sample)
        alpha, beta = self.renoise_coefficients[stage]
        upsampled = _upsample_nearest_2x(sample.float())
        noise = self.block_noise(upsampled.shape, generator=generator, device=sample.device)
        return (alpha * upsampled + beta * noise).to(sample.dtype)

    def downsample_noise(self, noise: torch.Tensor, times: int = 1) -> torch.Tensor:
        """Halve H and W `times` times (bilinear x 2.0, which keeps unit variance): full-res noise -> stage 0."""
        _check_5d("noise", noise)
        if isinstance(times, bool) or not isinstance(times, int) or times < 0:
            raise ValueError(f"`times` must be an int >= 0, got {times!r}.")
        for _ in range(times):
            h, w = noise.shape[-2] // 2, noise.shape[-1] // 2
            noise = _per_frame(lambda x: F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False), noise)
            noise = noise * 2.0
        return noise

    def pyramid(self, latents: torch.Tensor) -> list[torch.Tensor]:
        """Clean latent at every stage resolution, lowest first: bilinear halving per frame, no rescaling."""
        _check_5d("latents", latents)
        levels = [latents]
        for _ in range(self.config.stages - 1):
            h, w = levels[0].shape[-2] // 2, levels[0].shape[-1] // 2
            down = _per_frame(lambda x: F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False), levels[0])
            levels.insert(0, down)
        return levels

    def history_conditions(
        self, history: torch.Tensor | list[torch.Tensor] | None, stage: int
    ) -> list[torch.Tensor]:
        """The clean history clips the transformer sees before the noisy clip at `stage`, oldest first.

        The newest frame is given at the stage's own resolution, then each older frame one stage lower while
        the stage is above 0, and every remaining older frame in one clip at the lowest resolution (the
        layout of the reference's `_prepare_past_condition_latents` with one latent frame per unit; at stage
        0 that is two lowest-resolution clips, older frames then the newest). E.g. 6 frames at stage 2 of 3:
        [f0-3 @1/4, f4 @1/2, f5 @full].

        Args:
            history: clean full-resolution latents [B, C, u, H, W], or their `pyramid` (to build it once per
                unit for all stages); `None` or u == 0 gives [].
            stage: the stage being sampled.
        """
        self._check_stage(stage)
        if history is None:
            return []
        if torch.is_tensor(history):
            _check_5d("history", history)
            if history.shape[2] == 0:
                return []
            levels = self.pyramid(history)
        else:
            levels = list(history)
            if len(levels) != self.config.stages or len({level.shape[2] for level in levels}) != 1:
                raise ValueError(
                    f"`history` must be a 5-D tensor or a list of {self.config.stages} pyramid levels with equal "
                    "frame counts, as returned by `pyramid`."
                )
        num_frames = levels[0].shape[2]
        if num_frames == 0:
            return []
        clips = [levels[stage][:, :, num_frames - 1 :]]
        used = 1
        for level in range(stage - 1, 0, -1):
            if used == num_frames:
                break
            used += 1
            clips.append(levels[level][:, :, num_frames - used : num_frames - used + 1])
        if used < num_frames:
            clips.append(levels[0][:, :, : num_frames - used])
        return clips[::-1]

    # ------------------------------------------------------------------------------------------- training

    @staticmethod
    def add_history_noise(
        clips: list[torch.Tensor], sigma: torch.Tensor, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """Noisy history ``sigma * noise + (1 - sigma) * clean``, one sigma per sample [B] shared by all clips, fresh
        Gaussian noise at each clip's own resolution: training's history corruption (Pyramid-Flow corrupts each
        pyramid level's clip so) and the pipelines' ``history_noise``."""
        out = []
        for clip in clips:
            noise = randn_tensor(tuple(clip.shape), generator=generator, device=clip.device, dtype=torch.float32)
            s = sigma.to(device=clip.device, dtype=torch.float32).reshape(-1, *([1] * (clip.ndim - 1)))
            out.append((s * noise + (1.0 - s) * clip.float()).to(clip.dtype))
        return out

    def stage_endpoints(
        self,
        clean: torch.Tensor,
        noise: torch.Tensor,
        stage: int,
        clean_lower: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Start (local sigma 1) and end (local sigma 0) points of `stage`, at that stage's resolution.

        start = noise at stage 0, else start_sigma * noise + (1 - start_sigma) * up2(clean_lower): the
        renoised previous stage's end with its (upsampled) clean part standing in for the prediction.
        end = clean at the last stage, else end_sigma * noise + (1 - end_sigma) * clean.

        Args:
            clean: clean latent at this stage's resolution (`pyramid(latents)[stage]`).
            noise: noise at this stage's resolution (`downsample_noise(full_noise, stages - 1 - stage)`).
            clean_lower: clean latent of stage - 1 (half resolution); required for stage > 0.
        """
        self._check_stage(stage)
        if clean.shape != noise.shape:
            raise ValueError(
                f"`clean` {tuple(clean.shape)} and `noise` {tuple(noise.shape)} must have the same shape."
            )
        if stage == 0:
            start = noise
        else:
            if clean_lower is None:
                raise ValueError(
                    f"`clean_lower` (the stage {stage - 1} clean latent) is required for stage {stage}."
                )
            _check_5d("clean_lower", clean_lower)
            upsampled = _upsample_nearest_2x(clean_lower)
            if upsampled.shape != clean.shape:
                raise ValueError(
                    f"`clean_lower` {tuple(clean_lower.shape)} must have half the height and width of `clean` "
                    f"{tuple(clean.shape)}."
                )
            start_sigma = self.start_sigmas[stage]
            start = start_sigma * noise + (1.0 - start_sigma) * upsampled
        if stage == self.config.stages - 1:
            end = clean
        else:
            end_sigma = self.end_sigmas[stage]
            end = end_sigma * noise + (1.0 - end_sigma) * clean
        return start, end

    def sample_training_timesteps(
        self,
        stage: int,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniformly pick one of the stage's `num_train_timesteps` grid points per sample.

        Returns:
            (ratio, timestep), both float32 [batch_size]: the stage-local sigma to `interpolate` with and the
            transformer's timestep input.
        """
        self._check_stage(stage)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
        n = self.config.num_train_timesteps
        rand_device = generator.device if generator is not None else "cpu"
        u = torch.rand((batch_size,), generator=generator, device=rand_device)
        idx = (u * n).long().clamp(0, n - 1).cpu()
        ratio = self.sigmas_per_stage[stage][idx].to(device or u.device)
        timestep = self.timesteps_per_stage[stage][idx].to(device or u.device)
        return ratio, timestep

    def sample_inference_timesteps(
        self,
        stage: int,
        num_inference_steps: int,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniformly pick one step of the stage's `num_inference_steps`-step sampling schedule per sample.

        The training counterpart of `sample_training_timesteps` for a step-distilled (DMD) student: it is trained
        only at the noise levels its own n-step sampler visits (those of `set_timesteps(n)`), e.g. only the stage
        start for 1 step per stage.

        Returns:
            (ratio, timestep), both float32 [batch_size]: the stage-local sigma and the transformer's timestep input.
        """
        self._check_stage(stage)
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
        timesteps, sigmas = self._stage_schedule(stage, num_inference_steps)
        rand_device = generator.device if generator is not None else "cpu"
        u = torch.rand((batch_size,), generator=generator, device=rand_device)
        idx = (u * num_inference_steps).long().clamp(0, num_inference_steps - 1).cpu()
        return sigmas[idx].to(device or u.device), timesteps[idx].to(device or u.device)

    def interpolate(self, start: torch.Tensor, end: torch.Tensor, ratio: float | torch.Tensor) -> torch.Tensor:
        """Point at stage-local sigma `ratio` on the straight path: ratio * start + (1 - ratio) * end."""
        ratio = self._broadcast(ratio, start, "ratio")
        return (ratio * start.float() + (1.0 - ratio) * end.float()).to(start.dtype)

    @staticmethod
    def velocity_target(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """Flow-matching regression target d x / d sigma_local = start - end (noisier minus cleaner)."""
        return start - end

    def predict_stage_end(
        self, sample: torch.Tensor, model_output: torch.Tensor, sigma: float | torch.Tensor
    ) -> torch.Tensor:
        """DMD student's one-step jump to the stage end: sample - sigma * model_output.

        This is the paper's z_theta = z_sigma - sigma / (sigma_start - sigma_end) * D_theta written in the
        stage-local sigma: a sample at global noise level g = sigma_end + sigma * (sigma_start - sigma_end)
        is one Euler step of length (g - sigma_end) / (sigma_start - sigma_end) = sigma away from the end,
        the paper's sigma being measured from the stage end (exactly the global level in the last stage,
        where sigma_end = 0). Equal to `euler_step(model_output, sample, sigma, 0.0)`, differentiable.
        """
        return self.euler_step(model_output, sample, sigma, 0.0).prev_sample

    def predict_clean_stage_latent(
        self, sample: torch.Tensor, model_output: torch.Tensor, sigma: float | torch.Tensor, stage: int
    ) -> torch.Tensor:
        """The paper's DMD student step: the clean latent of `stage` in one Euler step,
        z = z_sigma - g / (sigma_start - sigma_end) * D(z_sigma), with g the *global* noise level of `sample`.

        `sigma` is the stage-local sigma r of `sample` (what the pipeline and training use); its global level is
        g = sigma_end + r * (sigma_start - sigma_end), so the step runs the stage's straight line past the stage end
        (local sigma 0) to global noise level 0, local sigma -sigma_end / (sigma_start - sigma_end), where the noise
        cancels: the clean stage latent (for stage 0 and the last stage exactly the clean latent the stage was
        built from; in between the mix of it and the upsampled lower stage the stage started from). In the last
        stage (sigma_end = 0) it equals `predict_stage_end`. Differentiable; per-sample [B] `sigma` allowed.
        """
        self._check_stage(stage)
        start, end = self.start_sigmas[stage], self.end_sigmas[stage]
        return self.euler_step(model_output, sample, sigma, -end / (start - end)).prev_sample
