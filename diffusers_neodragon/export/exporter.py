"""Export a NeodragonPipeline's components to static-shape ONNX graphs plus a ``manifest.json``.

One exporter: ``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``, constant folding, no dynamic axes).
optimum's exporter was dropped: ``optimum-onnx`` (0.1.0, its newest release) pins ``transformers<4.58`` and
``optimum~=2.1.0``, so it cannot install cleanly beside our ``transformers>=5``, and on our own wrappers it only
called ``torch.onnx.export`` with these same settings (the graphs came out with the same nodes and the same error).
``backend="auto"`` and ``"torch"`` both name it.

The requested components are checked before anything is built or written (:func:`.specs.select_components`). A full
export (no ``components``) exports every graph that can be exported and records the others with their reason under
``"skipped"`` in the manifest, with a :class:`SkippedComponentWarning` (e.g. a VAE decoder no step wrapper knows);
naming an unexportable graph is an error. The files are written into a temporary folder beside the output that
replaces it only when everything succeeded (:func:`staged_output`), so a failed export leaves nothing behind.

Every graph is checked after export: ONNX Runtime (CPU) on the spec's example inputs against the torch wrapper; the
maximum absolute error goes into the manifest next to opset, shapes and dtypes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from .graph_passes import drop_empty_concat_inputs, fold_static_shapes
from .specs import ComponentSpec, ExportSize, pipeline_specs, skipped_components
from .wrappers import DEFAULT_MASK_VALUE


MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_OPSET = 17
_TWO_GB = 2**31 - 1


class SkippedComponentWarning(UserWarning):
    """A full export left out a graph that cannot be exported (named with its reason in the manifest's "skipped")."""


def resolve_backend(backend: str = "auto") -> str:
    if backend == "optimum":
        raise ValueError("backend 'optimum' was removed: optimum-onnx cannot install beside transformers>=5 and "
                         "exported the same graphs as torch.onnx; use backend='torch' (or 'auto')")
    if backend not in ("auto", "torch"):
        raise ValueError(f"backend must be 'auto' or 'torch', got {backend!r}")
    return "torch"


def _consolidate_external_data(path: Path) -> None:
    """Store the weights of a > 2 GB graph in one ``<file>_data`` file next to it (the legacy exporter writes one
    file per tensor), or keep a small graph self-contained."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    uses_external = any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer
    )
    if not uses_external:
        return
    # Initializers and Constant-node tensors (the legacy exporter stores large ones of both as their own files).
    tensors = list(model.graph.initializer) + [
        attr.t for node in model.graph.node for attr in node.attribute if attr.type == onnx.AttributeProto.TENSOR
    ]
    stale = {entry.value for tensor in tensors for entry in tensor.external_data if entry.key == "location"}
    model = onnx.load(str(path), load_external_data=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + "_data", size_threshold=1024, convert_attribute=True)
    for name in stale:
        if name != path.name + "_data" and (path.parent / name).exists():
            os.remove(path.parent / name)


def _export_torch(spec: ComponentSpec, path: Path, opset: int) -> None:
    with torch.no_grad():
        torch.onnx.export(
            spec.module, (dict(spec.inputs),), str(path), input_names=list(spec.inputs),
            output_names=spec.output_names, opset_version=opset, do_constant_folding=True, dynamo=False,
        )


def onnx_io(path: Path) -> dict[str, dict[str, dict]]:
    """Names, shapes and element types of a graph's inputs and outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        out = {}
        for value in values:
            tensor = value.type.tensor_type
            out[value.name] = {
                "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim],
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
            }
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def validate_component(spec: ComponentSpec, path: Path) -> float:
    """Max abs difference between ONNX Runtime (CPU) and the torch wrapper on the spec's example inputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v.numpy() for k, v in spec.inputs.items() if k in names}
    got = session.run(spec.output_names, feeds)
    with torch.no_grad():
        want = spec.module(**spec.inputs)
    want = want if isinstance(want, (tuple, list)) else (want,)
    return max(float(np.abs(g - w.numpy()).max()) if g.size else 0.0 for g, w in zip(got, want))


def export_component(
    spec: ComponentSpec, output_dir, backend: str = "auto", opset: int = DEFAULT_OPSET, validate: bool = True,
    fold_shapes: bool = True,
) -> dict:
    """Export one spec to ``output_dir/<name>.onnx``; returns its manifest entry."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    backend = resolve_backend(backend)
    path = output_dir / f"{spec.name}.onnx"
    start = time.perf_counter()
    _export_torch(spec, path, opset)
    _consolidate_external_data(path)
    dropped = drop_empty_concat_inputs(path)
    folded = fold_static_shapes(path) if fold_shapes else 0
    seconds = time.perf_counter() - start
    io = onnx_io(path)
    entry = {
        "file": path.name,
        "kind": spec.kind,
        "backend": backend,
        "opset": opset,
        "inputs": io["inputs"],
        "outputs": io["outputs"],
        "parameters": int(sum(p.numel() for p in spec.module.parameters())),
        "export_seconds": round(seconds, 2),
        "graph_passes": {"dropped_empty_concat_inputs": dropped, "folded_nodes": folded},
        "metadata": spec.metadata,
    }
    if validate:
        entry["max_abs_error_vs_torch"] = validate_component(spec, path)
    return entry


def _save_host_side(pipe, output_dir: Path) -> dict:
    """Tokenizers, scheduler configs and VAE/pipeline constants the ONNX runtime pipeline needs."""
    saved = {}
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        tokenizer = getattr(pipe, name, None)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir / name)
            saved[name] = name
    pipe.scheduler.save_pretrained(output_dir / "scheduler")
    saved["scheduler"] = "scheduler"
    ff = pipe.first_frame_pipeline
    if ff is not None:
        ff.scheduler.save_pretrained(output_dir / "t2i_scheduler")
        saved["t2i_scheduler"] = "t2i_scheduler"
        for name in ("tokenizer", "tokenizer_2"):
            tokenizer = getattr(ff, name, None)
            if tokenizer is not None:
                tokenizer.save_pretrained(output_dir / f"t2i_{name}")
                saved[f"t2i_{name}"] = f"t2i_{name}"
    vae = pipe.vae.config
    return {
        "files": saved,
        "pipeline_config": {k: pipe.config.get(k) for k in (
            "mode", "prompt_suffix", "default_negative_prompt", "default_guidance_scale",
            "default_video_guidance_scale", "default_history_noise")},
        "vae": {k: vae[k] for k in ("latent_channels", "image_latent_shift", "image_latent_scale", "video_latent_shift",
                                    "video_latent_scale", "spatial_downsample_scale", "temporal_downsample_scale")},
        "transformer": {"in_channels": pipe.transformer.config.in_channels,
                        "patch_size": pipe.transformer.config.patch_size},
        "t2i": None if ff is None else {
            "class": type(ff).__name__, "vae_scale_factor": ff.vae_scale_factor,
            "force_zeros_for_empty_prompt": ff.config.get("force_zeros_for_empty_prompt", False),
        },
    }


@contextlib.contextmanager
def staged_output(output_dir) -> Iterator[Path]:
    """Yield a fresh temporary folder to write into; on success its entries move into ``output_dir`` (created when
    missing; same-named entries of an existing folder are replaced, others kept), on failure it is deleted.

    The temporary folder sits in the nearest existing ancestor of ``output_dir`` (same file system, so the final
    moves are renames), and missing parents are created only on success: an export that fails, or that cannot
    write there at all, leaves no file or folder behind.
    """
    output_dir = Path(output_dir).absolute()
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"the output {output_dir} exists and is not a folder")
    anchor = output_dir.parent
    while not anchor.exists():
        anchor = anchor.parent
    work = anchor / f".{output_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    work.mkdir()  # default permissions (mkdtemp's are owner-only), kept by the final rename
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        if not output_dir.exists():
            output_dir.parent.mkdir(parents=True, exist_ok=True)
            work.rename(output_dir)
            return
        for entry in work.iterdir():
            target = output_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
        work.rmdir()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_pipeline(
    pipe,
    output_dir,
    size: ExportSize | None = None,
    components: list[str] | None = None,
    backend: str = "auto",
    opset: int = DEFAULT_OPSET,
    mask_value: float = DEFAULT_MASK_VALUE,
    validate: bool = True,
    fold_shapes: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Export every component of ``pipe`` (a ``NeodragonPipeline``) for one generation size and write the manifest.

    ``components`` (names or kinds) limits the export; each requested graph is checked to be exportable before any
    work, and a ``ValueError`` names those that are not and why. Without ``components``, the graphs that cannot be
    exported are skipped with a :class:`SkippedComponentWarning` and listed with their reason in the manifest's
    ``"skipped"``. The files appear in ``output_dir`` only when the whole export succeeded (see
    :func:`staged_output`). Returns the manifest (also written to ``output_dir/manifest.json``).
    """
    size = size or ExportSize(pipe.config.default_height, pipe.config.default_width, pipe.config.default_num_frames)
    progress = progress or (lambda message: None)
    backend = resolve_backend(backend)
    specs = pipeline_specs(pipe, size, components, mask_value=mask_value)
    skipped = skipped_components(pipe, components)
    for name, reason in skipped.items():
        warnings.warn(f"skipping {name}: {reason}", SkippedComponentWarning, stacklevel=2)
    pipe.set_progress_bar_config(disable=True)
    manifest = {
        "format": MANIFEST_FORMAT,
        "backend": backend,
        "opset": opset,
        "torch": torch.__version__,
        "size": {"height": size.height, "width": size.width, "num_frames": size.num_frames,
                 "max_sequence_length": size.max_sequence_length},
        "attention_mask_value": mask_value,
        "components": {},
        "skipped": skipped,
    }
    with staged_output(output_dir) as work:
        manifest.update(_save_host_side(pipe, work))
        for index, spec in enumerate(specs, 1):
            progress(f"[{index}/{len(specs)}] exporting {spec.name} ({spec.kind}) with {backend}")
            entry = export_component(spec, work, backend=backend, opset=opset, validate=validate,
                                     fold_shapes=fold_shapes)
            manifest["components"][spec.name] = entry
            error = entry.get("max_abs_error_vs_torch")
            progress(f"      {entry['file']}: {entry['parameters']:,} parameters, {entry['export_seconds']} s"
                     + ("" if error is None else f", ORT vs torch max abs error {error:.2e}"))
            spec.module = None  # release the wrapper (large for full-size models)
        write_manifest(work, manifest)
    return manifest


def write_manifest(output_dir, manifest: dict) -> Path:
    path = Path(output_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False))
    return path


def read_manifest(output_dir) -> dict:
    path = Path(output_dir) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: export the pipeline first (neodragon export ...)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')}, this version reads {MANIFEST_FORMAT}")
    return manifest
