"""The per-latent-frame pyramid sampling loop, shared by every sampler of the project."""

from collections.abc import Callable

import torch


def sample_latent_frame(
    transformer: Callable,
    scheduler,
    x: torch.Tensor,
    history: list[torch.Tensor] | None,
    text: tuple,
    num_inference_steps: list[int],
    guidance_scale: float | Callable[[], float | None] | None = None,
    generator: torch.Generator | None = None,
    history_sigma: torch.Tensor | None = None,
    start_stage: int = 0,
    on_step: Callable | None = None,
    interrupted: Callable[[], bool] = lambda: False,
) -> torch.Tensor:
    """Sample one latent frame through the pyramid stages ``start_stage`` .. last (the body of the autoregressive
    loop): the one implementation of it, run by ``NeodragonPipeline.denoise_unit``, the ONNX pipeline (with its
    stage graphs as ``transformer``) and training (frames sampled from a true history).

    Args:
        transformer: called as the pipeline calls ``NeodragonTransformer3DModel`` (``.sample`` is the velocity).
        scheduler: the ``PyramidalDMDScheduler``.
        x: stage-0 noise [B, C, 1, h, w] (``start_stage`` 0), or the clean estimate of stage ``start_stage - 1``,
            which is re-noised into stage ``start_stage`` (an SDEdit-like partial regeneration).
        history: ``scheduler.pyramid`` of the earlier latent frames, or ``None`` for the first frame.
        text: ``(embeds, mask, pooled)``; with ``guidance_scale`` the negative rows come first, then the positive.
        num_inference_steps: steps per stage.
        guidance_scale: CFG scale, or ``None`` for a single conditional pass; or a function returning the scale,
            called at every step (how ``__call__`` lets a callback change guidance mid-generation): a step uses
            CFG when it returns a value > 1 and ``text`` holds negative rows, else the positive rows alone.
        history_sigma: per-sample history-noise sigma [B] (see ``history_noise``), or ``None``.
        on_step: ``on_step(t, x) -> x`` after every step (callbacks, progress).
        interrupted: asked before every step; once it returns True the remaining steps are skipped.
    """
    stages = scheduler.config.stages
    if not 0 <= start_stage < stages:
        raise ValueError(f"`start_stage` must be in [0, {stages - 1}], got {start_stage}.")
    dtype = x.dtype
    batch = x.shape[0]
    paired = text[0].shape[0] == 2 * batch
    if guidance_scale is not None and not callable(guidance_scale) and not paired:
        raise ValueError(
            f"CFG needs `text` with {2 * batch} rows (negative, then positive), got {text[0].shape[0]}")
    positive = (text[0][batch:], None if text[1] is None else text[1][batch:], text[2][batch:]) if paired else text
    scheduler.set_timesteps(num_inference_steps, device=x.device)
    for stage in range(start_stage, stages):
        if stage > 0:
            x = scheduler.renoise(x, stage, generator=generator)
        conditions = scheduler.history_conditions(history, stage)
        if history_sigma is not None and conditions:
            conditions = scheduler.add_history_noise(conditions, history_sigma, generator)
        paired_conditions = None
        timesteps, sigmas = scheduler.stage_timesteps[stage], scheduler.stage_sigmas[stage]
        for i in range(len(timesteps)):
            if interrupted():
                continue
            if callable(guidance_scale):
                scale = guidance_scale()
                use_cfg = paired and scale is not None and scale > 1.0
            else:
                scale, use_cfg = guidance_scale, guidance_scale is not None
            if use_cfg and paired_conditions is None:
                paired_conditions = [torch.cat([c, c]) for c in conditions]
            model_input = torch.cat([x, x]) if use_cfg else x
            embeds, mask, pooled = text if use_cfg else positive
            # The reference casts timestep and sigma to the model dtype (bf16 rounding included).
            t = timesteps[i].to(dtype)
            velocity = transformer(
                hidden_states=model_input, encoder_hidden_states=embeds, pooled_projections=pooled,
                timestep=t.float(), history=paired_conditions if use_cfg else conditions,
                encoder_attention_mask=mask,
            ).sample
            if use_cfg:
                uncond, cond = velocity.chunk(2)
                velocity = uncond + scale * (cond - uncond)
            x = scheduler.euler_step(velocity, x, sigmas[i].to(dtype), sigmas[i + 1].to(dtype)).prev_sample
            if on_step is not None:
                x = on_step(t, x)
    return x
