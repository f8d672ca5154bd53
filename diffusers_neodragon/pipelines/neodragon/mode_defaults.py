"""The generation defaults of each mode of the official release, shared by the pipeline, the ONNX pipeline and
training's validation sampler."""

MODES = ("hybrid", "monolithic")
# Per-mode defaults of the official release: hybrid = T2I first frame + step-distilled 1-1-1 without CFG;
# monolithic = DiT first frame 20-20-20 with CFG 7, then 10-10-10 with CFG 5.
MODE_DEFAULTS = {
    "hybrid": dict(num_inference_steps=(20, 20, 20), video_num_inference_steps=(1, 1, 1), guidance_scale=0.0,
                   video_guidance_scale=0.0),
    "monolithic": dict(num_inference_steps=(20, 20, 20), video_num_inference_steps=(10, 10, 10), guidance_scale=7.0,
                       video_guidance_scale=5.0),
}
# The release's first-frame generator: SSD-1B with LCM, 4 steps at fixed timesteps, no CFG.
FIRST_FRAME_DEFAULTS = dict(num_inference_steps=4, timesteps=[999, 749, 499, 249], guidance_scale=0.0)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def first_given(*values):
    """The first value that is not None (a call's argument, then the pipeline's config, then the mode's)."""
    return next(v for v in values if v is not None)
