"""Import optimum's ONNX exporter under transformers 5.

``optimum-onnx`` 0.1.0 (the newest release, with ``optimum`` 2.1) declares ``transformers<4.58`` and its import
fails under transformers 5.x on three names that transformers 5 removed:

* ``optimum/exporters/onnx/convert.py:30``: ``from transformers.modeling_utils import get_parameter_dtype``
* ``optimum/exporters/onnx/_traceable_decorator.py:18``:
  ``from transformers.utils.generic import _CAN_RECORD_REGISTRY, OutputRecorder``
* ``optimum/exporters/onnx/model_patcher.py:37``:
  ``from transformers.models.clip.modeling_clip import CLIPSdpaAttention``

None of them is used on the path we take (``export_models`` on our own wrappers with our own ``OnnxConfig``
subclasses, TorchScript exporter): the dtype helper only picks the validation dtype, the other two serve
optimum's patches of transformers LLM/CLIP classes. :func:`import_optimum_exporter` first tries a plain import and,
only if that fails on exactly those names, defines them (never replacing anything transformers has) and retries.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


_STATUS: tuple[bool, str] | None = None


def _define_missing_transformers_names() -> list:
    import torch
    import transformers.modeling_utils as modeling_utils
    import transformers.utils.generic as generic

    added = []
    if not hasattr(modeling_utils, "get_parameter_dtype"):
        def get_parameter_dtype(module: torch.nn.Module) -> torch.dtype:
            for tensor in module.parameters():
                if tensor.is_floating_point():
                    return tensor.dtype
            return torch.float32

        modeling_utils.get_parameter_dtype = get_parameter_dtype
        added.append("transformers.modeling_utils.get_parameter_dtype")
    if not hasattr(generic, "_CAN_RECORD_REGISTRY"):
        generic._CAN_RECORD_REGISTRY = {}
        added.append("transformers.utils.generic._CAN_RECORD_REGISTRY")
    if not hasattr(generic, "OutputRecorder"):
        class OutputRecorder:  # placeholder type; optimum only references it in LLM output capture
            def __init__(self, *args, **kwargs):
                self.args, self.kwargs = args, kwargs

        generic.OutputRecorder = OutputRecorder
        added.append("transformers.utils.generic.OutputRecorder")
    try:
        import transformers.models.clip.modeling_clip as modeling_clip

        if not hasattr(modeling_clip, "CLIPSdpaAttention"):
            modeling_clip.CLIPSdpaAttention = modeling_clip.CLIPAttention
            added.append("transformers.models.clip.modeling_clip.CLIPSdpaAttention")
    except ImportError:
        pass
    return added


def import_optimum_exporter():
    """Return ``optimum.exporters.onnx`` or raise ``ImportError`` saying exactly why it is unusable."""
    global _STATUS
    try:
        module = importlib.import_module("optimum.exporters.onnx")
        module.export_models  # noqa: B018 - the package is lazy: resolve the attribute to really import it
        module.OnnxConfig  # noqa: B018
        _STATUS = (True, "imported")
        return module
    except ImportError as first_error:
        if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.exporters.onnx") is None:
            _STATUS = (False, "optimum-onnx is not installed (pip install optimum-onnx)")
            raise ImportError(_STATUS[1]) from first_error
        for name in list(sys.modules):
            if name.startswith("optimum.exporters"):
                del sys.modules[name]
        added = _define_missing_transformers_names()
        try:
            module = importlib.import_module("optimum.exporters.onnx")
            module.export_models  # noqa: B018 - resolve the lazy attribute now, so failures surface here
            module.OnnxConfig  # noqa: B018
        except Exception as error:  # noqa: BLE001
            _STATUS = (False, f"optimum's exporter does not import with this transformers: {error!r}")
            raise ImportError(_STATUS[1]) from error
        _STATUS = (True, "imported after defining " + ", ".join(added) if added else "imported")
        return module


def optimum_status() -> tuple[bool, str]:
    """(usable, how) for the manifest and the CLI."""
    if _STATUS is None:
        try:
            import_optimum_exporter()
            if _STATUS is None:
                return True, "imported"
        except ImportError:
            pass
    return _STATUS
