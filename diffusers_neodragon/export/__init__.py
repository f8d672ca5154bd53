"""Export of Neodragon to Snapdragon NPUs: static-shape ONNX graphs, an ONNX Runtime pipeline, the QNN HTP check,
w8a16 quantisation and Qualcomm AI Hub jobs.

Modules (import what you need; the heavy optional dependencies are only imported there):

* ``wrappers``: the components as fixed-shape modules around the models' own forward (pyramid-stage transformer
  graphs with padded history, additive attention mask and host-side RoPE / timestep projection; streaming decoder
  step; ...);
* ``specs``: which graphs a pipeline has, which of them can be exported (checked before any work), their example
  inputs;
* ``exporter``: ``export_pipeline`` / ``export_component`` (``torch.onnx``) and ``manifest.json`` (written through
  a temporary folder, so a failed export leaves nothing); ``graph_passes``: NPU clean-ups;
* ``ort_pipeline``: ``ORTNeodragonPipeline``, the whole generation from the exported graphs (the torch pipeline's
  own per-frame loop, its transformer calls answered by the stage graphs);
* ``quantize``: w8a16 QDQ graphs calibrated with the ONNX pipeline;
* ``htp_check``: compile/run on the QNN HTP simulator with CPU fallback disabled, errors, sizes, memory;
* ``aihub``: AI Hub compile → link → inference (with profiling) jobs; ``aihub_offline``: the same jobs through
  qai-hub's own client with the network replaced (a dry run without a token); ``cli``: ``neodragon export``.

Needs the ``export`` extra: onnx, onnxruntime (or onnxruntime-qnn, which includes it), qai-hub.
"""

import importlib


# Public name -> submodule. Everything loads lazily, so ``neodragon --help`` and ``import diffusers_neodragon.export``
# stay cheap and the optional dependencies (onnx, onnxruntime[-qnn], qai-hub) load only when used.
_EXPORTS = {
    "ComponentSpec": "specs",
    "ExportSize": "specs",
    "pipeline_specs": "specs",
    "select_components": "specs",
    "skipped_components": "specs",
    "SkippedComponentWarning": "exporter",
    "export_pipeline": "exporter",
    "export_component": "exporter",
    "read_manifest": "exporter",
    "ORTNeodragonPipeline": "ort_pipeline",
    "torch_vae_decoder": "ort_pipeline",
    "check_export": "htp_check",
    "check_graph": "htp_check",
    "format_report": "htp_check",
    "HTPReport": "htp_check",
    "quantize_export": "quantize",
    "submit_jobs": "aihub",
    "require_token": "aihub",
    "AIHubConfigurationError": "aihub",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
