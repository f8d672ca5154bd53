"""ONNX graph clean-ups for the NPU that keep the computation identical.

* :func:`drop_empty_concat_inputs`: the TorchScript exporter keeps zero-size tensors such as ``x[:, :-1]`` of a
  one-frame clip (the tiny decoder's MemBlock ``past`` for a single latent frame) as ``Slice`` outputs feeding a
  ``Concat``. QNN has no zero-size tensors, so the ``Slice`` is refused by the HTP. Concatenating an empty tensor is
  the identity: the input is dropped (and a one-input ``Concat`` becomes ``Identity``).
"""

from __future__ import annotations

import os
from pathlib import Path


def static_shapes(model):
    """Static shapes of every value. ONNX's own inference loses the shapes computed by Shape/Gather/Concat chains that
    the TorchScript exporter leaves in; ONNX Runtime's symbolic inference resolves them on a static graph."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # noqa: BLE001 - fall back to ONNX's inference
        from onnx import shape_inference

        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    return shapes


def _remove_dead_nodes(graph) -> int:
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    removed = len(graph.node) - len(keep)
    if removed:
        kept = list(reversed(keep))
        del graph.node[:]
        graph.node.extend(kept)
    return removed


def drop_empty_concat_inputs(path) -> int:
    """Rewrite ``path`` in place; returns the number of empty ``Concat`` inputs dropped."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    shapes = static_shapes(model)
    dropped = 0
    for node in model.graph.node:
        if node.op_type != "Concat":
            continue
        inputs = [name for name in node.input if not (name in shapes and 0 in shapes[name])]
        if len(inputs) == len(node.input) or not inputs:
            continue
        dropped += len(node.input) - len(inputs)
        del node.input[:]
        node.input.extend(inputs)
        if len(inputs) == 1:
            node.op_type = "Identity"
            del node.attribute[:]
    if dropped:
        _remove_dead_nodes(model.graph)
        onnx.save(model, str(path))  # external data (if any) stays where it is: only the graph proto changes
    return dropped


def fold_static_shapes(path) -> int:
    """Constant-fold what the static input shapes decide (``Shape``/``Gather``/``Concat`` chains feeding
    ``Reshape``, constant subgraphs) with ONNX Runtime's *basic* graph optimisations, which only rewrite standard ONNX
    ops. Without it, a quantised (QDQ) graph keeps ``Shape`` nodes on dequantised activations that the HTP refuses.
    Rewrites ``path`` in place; returns the number of nodes removed."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    before = onnx.load(str(path), load_external_data=False)
    count = len(before.graph.node)
    external = any(init.data_location == onnx.TensorProto.EXTERNAL for init in before.graph.initializer)
    del before
    target = path.with_suffix(".folded.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    if external:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         path.name + "_data.folded")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    folded = onnx.load(str(target), load_external_data=False)
    removed = count - len(folded.graph.node)
    del folded
    if external:
        # Re-point the folded graph at a data file named after the final graph.
        model = onnx.load(str(target), load_external_data=False)
        for init in model.graph.initializer:
            for entry in init.external_data:
                if entry.key == "location":
                    entry.value = path.name + "_data"
        old_data = path.parent / (path.name + "_data")
        if old_data.exists():
            old_data.unlink()
        os.replace(path.parent / (path.name + "_data.folded"), old_data)
        onnx.save(model, str(path))
        target.unlink()
    else:
        os.replace(target, path)
    return removed
