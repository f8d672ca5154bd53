"""Check exported graphs on Qualcomm's HTP (Hexagon NPU) backend, offline, with ``onnxruntime-qnn``.

``onnxruntime-qnn`` ships the QNN HTP backend with its x86 simulator, so a graph can be compiled for a Snapdragon
HTP and executed on this CPU. With ``session.disable_cpu_ep_fallback=1`` session creation fails if *any* node would
be left to ONNX Runtime's CPU provider, so a session that opens means every node runs on the HTP. Per component the
check reports:

* ``on_htp``: session creation succeeded with CPU fallback disabled (else ``error`` says what failed);
* ``max_abs_error`` / ``rel_error``: HTP (fp16, or the w8a16 QDQ graph) vs the torch reference outputs;
* ``context_binary_bytes``: size of the compiled QNN context binary (``<name>_ctx.onnx`` + ``_qnn.bin``), the
  artefact a device loads;
* ``memory``: weights at the target precision + a liveness-based estimate of peak activation memory, next to the
  paper's 3.5 GB end-to-end budget.

``soc_model=69`` / ``htp_arch=79`` is a Snapdragon 8 Elite class HTP (verified to compile and run here).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


PAPER_BUDGET_BYTES = int(3.5 * 1024**3)
DEFAULT_SOC_MODEL = "69"
DEFAULT_HTP_ARCH = "79"
_BYTES = {"fp32": 4, "fp16": 2, "w8a16": 1}
_ACT_BYTES = {"fp32": 4, "fp16": 2, "w8a16": 2}


@dataclass
class HTPReport:
    component: str
    precision: str
    on_htp: bool
    error: str | None = None
    max_abs_error: float | None = None
    rel_error: float | None = None
    reference_max_abs: float | None = None
    context_binary_bytes: int | None = None
    compile_seconds: float | None = None
    run_seconds: float | None = None
    num_states: int = 0
    num_nodes: int = 0
    op_types: list[str] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def qnn_available() -> bool:
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError:
        return False
    return True


_REGISTERED = False


def _qnn_devices():
    global _REGISTERED
    import onnxruntime as ort
    import onnxruntime_qnn

    if not _REGISTERED:
        try:
            ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())
        except Exception as error:  # noqa: BLE001 - already registered in this process
            if "already" not in str(error).lower():
                raise
        _REGISTERED = True
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    if not devices:
        raise RuntimeError("onnxruntime-qnn registered no QNNExecutionProvider device")
    return devices


def htp_session_options(
    precision: str = "fp16", context_path: Path | None = None, soc_model: str = DEFAULT_SOC_MODEL,
    htp_arch: str = DEFAULT_HTP_ARCH,
):
    """Session options for the HTP backend with CPU fallback disabled (optionally writing a context binary)."""
    import onnxruntime as ort
    import onnxruntime_qnn

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if context_path is not None:
        options.add_session_config_entry("ep.context_enable", "1")
        options.add_session_config_entry("ep.context_file_path", str(context_path))
        options.add_session_config_entry("ep.context_embed_mode", "0")
    provider = {
        "backend_path": onnxruntime_qnn.get_qnn_htp_path(), "soc_model": soc_model, "htp_arch": htp_arch,
        "htp_graph_finalization_optimization_mode": "3",
    }
    if precision in ("fp16", "fp32"):
        provider["enable_htp_fp16_precision"] = "1"
    options.add_provider_for_devices(_qnn_devices(), provider)
    return options


# --------------------------------------------------------------------------------------------- memory estimate


def graph_memory(path, precision: str = "fp16") -> dict[str, float]:
    """Weights at ``precision`` and a liveness estimate of peak activation bytes (topological order, each tensor
    freed after its last consumer), in MiB. Shapes come from ONNX shape inference on the static graph."""
    import onnx
    from onnx import numpy_helper

    from .graph_passes import static_shapes

    model = onnx.load(str(path), load_external_data=False)
    weight_elems = 0
    initializers = set()
    for init in model.graph.initializer:
        initializers.add(init.name)
        count = int(np.prod(init.dims)) if len(init.dims) else 1
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            weight_elems += count
    # QDQ graphs: their weights are already integer initializers; count them at their own width.
    int_weight_bytes = sum(
        (int(np.prod(i.dims)) if len(i.dims) else 1)
        * numpy_helper.helper.tensor_dtype_to_np_dtype(i.data_type).itemsize
        for i in model.graph.initializer
        if i.data_type in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.UINT16,
                           onnx.TensorProto.INT16, onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
    )
    sizes = {name: int(np.prod(shape)) if shape else 1 for name, shape in static_shapes(model).items()}
    act_bytes = _ACT_BYTES[precision]
    last_use = {}
    nodes = list(model.graph.node)
    for index, node in enumerate(nodes):
        for name in node.input:
            last_use[name] = index
    outputs = {o.name for o in model.graph.output}
    live = {i.name: sizes.get(i.name, 0) for i in model.graph.input if i.name not in initializers}
    peak = sum(live.values())
    for index, node in enumerate(nodes):
        for name in node.output:
            if node.op_type not in ("Constant",):
                live[name] = sizes.get(name, 0)
        peak = max(peak, sum(live.values()))
        for name in list(live):
            if last_use.get(name, -1) <= index and name not in outputs:
                del live[name]
    weight_bytes = weight_elems * _BYTES[precision] + int_weight_bytes
    activation = peak * act_bytes
    mib = 1024**2
    return {
        "weights_mib": round(weight_bytes / mib, 3),
        "peak_activations_mib": round(activation / mib, 3),
        "total_mib": round((weight_bytes + activation) / mib, 3),
        "budget_fraction": round((weight_bytes + activation) / PAPER_BUDGET_BYTES, 5),
    }


# ------------------------------------------------------------------------------------------------------ check


def _op_types(path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sorted({n.op_type for n in model.graph.node}), len(model.graph.node)


def _context_size(context_path: Path) -> int | None:
    if not context_path.exists():
        return None
    total = context_path.stat().st_size
    for candidate in context_path.parent.glob(context_path.stem + "*.bin"):
        total += candidate.stat().st_size
    return total


def _error_line(error: Exception) -> str:
    """The first line of a compile error (QNN's can run to pages)."""
    return str(error).strip().splitlines()[0][:500] if str(error).strip() else repr(error)


def check_graph(
    path,
    feeds: dict[str, np.ndarray] | list[dict[str, np.ndarray]],
    reference: list[np.ndarray] | list[list[np.ndarray]] | None = None,
    precision: str = "fp16",
    component: str | None = None,
    work_dir=None,
    run: bool = True,
    soc_model: str = DEFAULT_SOC_MODEL,
    htp_arch: str = DEFAULT_HTP_ARCH,
) -> HTPReport:
    """Compile ``path`` for the HTP with CPU fallback disabled, write its context binary, run it on ``feeds`` and
    compare with ``reference`` (the torch outputs).

    ``feeds`` may be a list of states (then ``reference`` holds one output list per state): the report gives the
    worst state's error, since one state a quantised graph clips is what a video shows."""
    import onnxruntime as ort

    path = Path(path)
    name = component or path.stem
    states = feeds if isinstance(feeds, list) else [feeds]
    references = None if reference is None else (reference if isinstance(feeds, list) else [reference])
    work_dir = Path(work_dir or path.parent / "htp")
    work_dir.mkdir(parents=True, exist_ok=True)
    context_path = work_dir / f"{path.stem}_{precision}_ctx.onnx"
    for stale in work_dir.glob(f"{path.stem}_{precision}_ctx*"):
        stale.unlink()
    ops, count = _op_types(path)
    report = HTPReport(name, precision, on_htp=False, op_types=ops, num_nodes=count)
    report.memory = graph_memory(path, "w8a16" if precision == "w8a16" else "fp16")
    start = time.perf_counter()
    try:
        options = htp_session_options(precision, context_path, soc_model, htp_arch)
        session = ort.InferenceSession(str(path), options)
    except Exception as error:  # noqa: BLE001 - the failure is the finding
        report.error = _error_line(error)
        report.compile_seconds = round(time.perf_counter() - start, 2)
        return report
    report.compile_seconds = round(time.perf_counter() - start, 2)
    report.on_htp = True
    report.context_binary_bytes = _context_size(context_path)
    if run:
        names = [i.name for i in session.get_inputs()]
        start = time.perf_counter()
        outputs = [session.run(None, {k: state[k] for k in names}) for state in states]
        report.run_seconds = round((time.perf_counter() - start) / len(states), 2)
        report.num_states = len(states)
        for state_outputs, state_reference in zip(outputs, references or []):
            error = max(float(np.abs(o.astype(np.float32) - r).max()) for o, r in zip(state_outputs, state_reference))
            scale = max(float(np.abs(r).max()) for r in state_reference)
            if report.rel_error is None or error / max(scale, 1e-12) > report.rel_error:
                report.max_abs_error, report.reference_max_abs = error, scale
                report.rel_error = error / max(scale, 1e-12)
    del session
    return report


def compile_shared_context(
    paths, work_dir, precision: str = "fp16", name: str = "transformer_stages", soc_model: str = DEFAULT_SOC_MODEL,
    htp_arch: str = DEFAULT_HTP_ARCH,
) -> HTPReport:
    """Compile the graphs of ``paths`` into one QNN context binary, as a device loads the transformer's pyramid
    stages: a ``<graph>_<precision>_shared_ctx.onnx`` per graph, all pointing into one ``_qnn.bin`` named after the
    first graph's. Equal weights are stored once, whatever the graphs call them (the exporter names a stage's weights
    in tracing order, differently from stage to stage: the embedded model's three stages take 13.4 MiB together at
    fp16, 12.9-13.7 MiB each alone; at w8a16 10.8 MiB against 7.1-7.6 MiB).

    ONNX Runtime's QNN provider shares one QNN context across the sessions created with ``ep.share_ep_contexts``
    and writes it when the last one (``ep.stop_share_ep_contexts``) is made. The x86 HTP simulator cannot load a
    context binary back, so this compiles and sizes it; running it needs a device. The report's
    ``context_binary_bytes`` is the file a device loads."""
    import onnxruntime as ort

    paths = [Path(p) for p in paths]
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stems = [f"{p.stem}_{precision}_shared_ctx" for p in paths]
    for stem in stems:
        for stale in work_dir.glob(stem + "*"):
            stale.unlink()
    report = HTPReport(name, precision, on_htp=False, num_nodes=sum(_op_types(p)[1] for p in paths))
    start = time.perf_counter()
    try:
        for index, (path, stem) in enumerate(zip(paths, stems)):
            options = htp_session_options(precision, work_dir / f"{stem}.onnx", soc_model, htp_arch)
            options.add_session_config_entry("ep.share_ep_contexts", "1")
            if index == len(paths) - 1:
                options.add_session_config_entry("ep.stop_share_ep_contexts", "1")
            session = ort.InferenceSession(str(path), options)
            del session  # its graph stays in the QNN context the sessions share
    except Exception as error:  # noqa: BLE001 - the failure is the finding
        report.error = _error_line(error)
    report.compile_seconds = round(time.perf_counter() - start, 2)
    binaries = sorted(work_dir.glob(f"{stems[0]}*.bin"))
    if report.error is None and binaries:
        report.on_htp = True
        report.context_binary_bytes = sum(b.stat().st_size for b in binaries)
    return report


def check_spec(spec, onnx_path, precision: str = "fp16", work_dir=None, run: bool = True, **kwargs) -> HTPReport:
    """:func:`check_graph` on a :class:`~.specs.ComponentSpec`'s example inputs, with its torch outputs as reference."""
    import torch

    feeds = {k: v.numpy() for k, v in spec.inputs.items()}
    with torch.no_grad():
        out = spec.module(**spec.inputs)
    reference = [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
    return check_graph(onnx_path, feeds, reference, precision, spec.name, work_dir, run, **kwargs)


# The graphs of one generation in the order they run: a phase's graphs are needed together, and a phase's weights
# can be freed before the next phase loads its own. The transformer stages share one set of weights (one context
# binary with a graph per stage).
GENERATION_PHASES = (
    ("text", ("text_encoder", "pooled_text")),
    ("first-frame text", ("t2i_text_encoder", "t2i_text_encoder_2")),
    ("first frame", ("t2i_unet", "t2i_vae_decoder", "vae_encoder")),
    ("video", ("transformer_stage_*", "decoder_first_step", "decoder_step", "super_resolution")),
)


def _phase_of(name: str) -> str:
    for phase, names in GENERATION_PHASES:
        if any(name == n or (n.endswith("*") and name.startswith(n[:-1])) for n in names):
            return phase
    return "other"


def generation_memory(memories: dict[str, dict]) -> dict:
    """Memory of a generation on the device from each graph's ``{"weights_mib", "peak_activations_mib"}``.

    ``all_resident_mib``: every graph's weights loaded at once (the transformer stages' once) + the largest
    activation peak. ``peak_mib``: phases run one after another (:data:`GENERATION_PHASES`), each with its graphs'
    weights resident + its largest activation peak, and each freed before the next loads; ``phases`` gives each."""
    def weights(names):
        stages = [memories[n]["weights_mib"] for n in names if n.startswith("transformer_stage_")]
        return sum(memories[n]["weights_mib"] for n in names if not n.startswith("transformer_stage_")) + max(
            stages, default=0.0)

    def peak(names):
        return max((memories[n]["peak_activations_mib"] for n in names), default=0.0)

    phases = {}
    for name in memories:
        phases.setdefault(_phase_of(name), []).append(name)
    by_phase = {phase: {"components": names, "weights_mib": weights(names), "peak_activations_mib": peak(names),
                        "total_mib": weights(names) + peak(names)} for phase, names in phases.items()}
    return {"all_resident_mib": weights(list(memories)) + peak(list(memories)), "phases": by_phase,
            "peak_mib": max((p["total_mib"] for p in by_phase.values()), default=0.0)}


def format_memory(memories: dict[str, dict], budget_bytes: float = PAPER_BUDGET_BYTES) -> str:
    """Two lines: all weights resident, and phase by phase (see :func:`generation_memory`), against the budget."""
    memory = generation_memory(memories)
    worst = max(memory["phases"], key=lambda phase: memory["phases"][phase]["total_mib"]) if memory["phases"] else "-"
    return "\n".join([
        f"all weights resident (transformer stages' once) + largest activation peak: {memory['all_resident_mib']:.1f}"
        f" MiB = {memory['all_resident_mib'] * 2**20 / budget_bytes:.1%} of the paper's 3.5 GB budget",
        f"phase by phase ({', '.join(memory['phases'])}), the largest ({worst}): {memory['peak_mib']:.1f} MiB = "
        f"{memory['peak_mib'] * 2**20 / budget_bytes:.1%} of the budget",
    ])


def format_report(reports: list[HTPReport]) -> str:
    """A fixed-width table of HTP reports, with the memory against the paper's budget (:func:`format_memory`)."""
    lines = [
        f"{'component':24} {'prec':6} {'on HTP':7} {'nodes':>6} {'max|err|':>10} {'rel':>9} {'ctx MiB':>9} "
        f"{'weights MiB':>12} {'peak act MiB':>13} {'compile s':>10} {'run s':>8}"
    ]
    for r in reports:
        def fmt(value, spec):
            return format(value, spec) if value is not None else "-"

        lines.append(
            f"{r.component:24} {r.precision:6} {'yes' if r.on_htp else 'NO':7} {r.num_nodes:>6} "
            f"{fmt(r.max_abs_error, '.2e'):>10} {fmt(r.rel_error, '.2e'):>9} "
            f"{fmt(None if r.context_binary_bytes is None else r.context_binary_bytes / 2**20, '.2f'):>9} "
            f"{fmt(r.memory.get('weights_mib'), '.2f'):>12} {fmt(r.memory.get('peak_activations_mib'), '.2f'):>13} "
            f"{fmt(r.compile_seconds, '.1f'):>10} {fmt(r.run_seconds, '.1f'):>8}"
        )
        if r.error:
            lines.append(f"    error: {r.error}")
    memories = {r.component: {"weights_mib": r.memory.get("weights_mib", 0.0),
                              "peak_activations_mib": r.memory.get("peak_activations_mib", 0.0)}
                for r in reports if r.memory}  # a shared context's graphs have rows of their own
    if memories:
        lines.append(format_memory(memories))
    return "\n".join(lines)


def check_export(
    export_dir, precision: str = "fp16", components: list[str] | None = None, feeds_by_component=None,
    references_by_component=None, run: bool = True, progress=None, cpu_reference: bool = True,
) -> list[HTPReport]:
    """HTP-check the graphs of an export folder (``precision`` "fp16": the fp32 graphs compiled in fp16;
    "w8a16": the ``<name>.w8a16.onnx`` QDQ graphs, text graphs kept in fp16). Inputs default to random data of the
    right shapes; errors are measured against ``references_by_component`` or, with ``cpu_reference``, against the
    fp32 graph on ONNX Runtime's CPU provider (equal to torch to ~1e-6, see the manifest). When two or more
    transformer stages are on the HTP, a last report (``transformer_stages``) compiles them into one context binary
    with their weights shared (:func:`compile_shared_context`)."""
    from .exporter import read_manifest

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    progress = progress or (lambda message: None)
    reports, stages = [], []
    names = [n for n in manifest["components"] if not components or n in components
             or manifest["components"][n]["kind"] in components]
    for name in names:
        entry = manifest["components"][name]
        path = export_dir / entry["file"]
        graph_precision = precision
        if precision == "w8a16":
            quantised = export_dir / entry["file"].replace(".onnx", ".w8a16.onnx")
            if quantised.exists():
                path = quantised
            elif "w8a16_file" in entry and entry["w8a16_file"] is None:
                graph_precision = "fp16"  # kept in fp16 by the quantiser (mixed precision)
            else:
                reports.append(HTPReport(name, precision, False, error=f"{quantised.name} missing (quantise first)"))
                continue
        feeds = (feeds_by_component or {}).get(name) or random_feeds(entry["inputs"])
        reference = (references_by_component or {}).get(name)
        if reference is None and cpu_reference and run:
            import onnxruntime as ort

            cpu = ort.InferenceSession(str(export_dir / entry["file"]), providers=["CPUExecutionProvider"])
            feeds = feeds if isinstance(feeds, list) else [feeds]
            reference = [cpu.run(None, {i.name: state[i.name] for i in cpu.get_inputs()}) for state in feeds]
            del cpu
        progress(f"HTP {graph_precision}: {name} ...")
        report = check_graph(path, feeds, reference, graph_precision, name, export_dir / "htp", run)
        progress(f"      {'on HTP' if report.on_htp else 'NOT on HTP: ' + str(report.error)}")
        reports.append(report)
        if manifest["components"][name]["kind"] == "transformer_stage" and report.on_htp:
            stages.append(path)
    if len(stages) > 1:
        progress(f"HTP {precision}: {len(stages)} transformer stages into one context binary ...")
        reports.append(compile_shared_context(stages, export_dir / "htp", precision))
    return reports


def random_feeds(inputs: dict[str, dict], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, info in inputs.items():
        shape, dtype = info["shape"], np.dtype(info["dtype"])
        if np.issubdtype(dtype, np.integer):
            feeds[name] = np.ones(shape, dtype=dtype) if "mask" in name else rng.integers(0, 8, shape).astype(dtype)
        elif name == "timestep":
            feeds[name] = np.full(shape, 500.0, dtype=dtype)
        elif name == "timestep_proj":
            half = shape[-1] // 2
            angles = 500.0 * np.exp(-np.log(10000.0) * np.arange(half) / half)
            feeds[name] = np.concatenate([np.cos(angles), np.sin(angles)])[None].astype(dtype)
        elif name == "attention_bias":
            feeds[name] = np.zeros(shape, dtype=dtype)
        elif name == "rope_cos":
            feeds[name] = np.ones(shape, dtype=dtype)
        elif name == "rope_sin":
            feeds[name] = np.zeros(shape, dtype=dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def env_info() -> dict[str, str]:
    info = {}
    try:
        import onnxruntime
        import onnxruntime_qnn

        info = {"onnxruntime": onnxruntime.__version__, "onnxruntime_qnn": getattr(onnxruntime_qnn, "__version__", "?"),
                "qnn_htp": os.path.basename(onnxruntime_qnn.get_qnn_htp_path())}
    except ImportError:
        pass
    return info
