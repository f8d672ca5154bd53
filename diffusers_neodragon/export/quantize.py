"""w8a16 quantisation of exported graphs for the HTP: ONNX Runtime static quantisation to a QDQ graph.

Weights uint8, activations uint16 (w8a16, the precision ai-hub-models ships its diffusion models in), min-max
calibration on the inputs each graph really sees in a generation: :func:`collect_calibration_data` runs the
ONNX pipeline (fp32) on calibration prompts with a recorder attached. The QDQ graph is written next to the fp32
one as ``<name>.w8a16.onnx``; the HTP runs it as integer kernels.

The recipe is ONNX Runtime's for QNN (``qnn_preprocess_model`` + ``get_qnn_qdq_config`` +
``quantize``), i.e. ``quantize_static`` with QDQ format and the QNN EP's tensor-level overrides.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np


# Text encoders stay fp16 in a w8a16 deployment: their attention masks are large-negative constants/activations
# (T5's finfo.min extended mask, CLIP's causal mask) that wreck a 16-bit activation range (DT5 w8a16: relative
# error ~1.0 on the HTP simulator) or that QNN refuses to quantise (CLIP: ElementWiseAdd error 6007). They run
# once per video, so fp16 costs nothing that matters.
KEEP_FP16_KINDS = ("text_encoder", "pooled_text", "t2i_text_encoder")
DEFAULT_RANGE_MARGIN = 2.0

# Calibration and held-out prompts of a pipeline trained on real captions; a pipeline whose tokenizer names the Shapes
# prompt normaliser gets its own world's prompts instead (see :func:`default_calibration_prompts`).
DEFAULT_CALIBRATION_PROMPTS = (
    "a red car driving along a coastal road at sunset, cinematic",
    "a cat walking on the beach, waves in the background",
    "a drone flying over a snowy forest",
    "a person pouring coffee into a white cup, close-up",
)
DEFAULT_HELDOUT_PROMPTS = (
    "fireworks over a city skyline at night",
    "a goldfish swimming in a glass bowl",
)


def default_calibration_prompts(tokenizer=None, split: str = "seen", n: int = 4) -> list[str]:
    """Prompts like those the pipeline will be given: for the Shapes world's models (``tokenizer`` names its prompt
    normaliser) ``n`` of ShapesBench's ``split`` ("seen" calibrates, "heldout" checks), else real captions
    (:data:`DEFAULT_CALIBRATION_PROMPTS`, or :data:`DEFAULT_HELDOUT_PROMPTS` for "heldout")."""
    if split not in ("seen", "heldout"):
        raise ValueError(f"split must be 'seen' or 'heldout', got {split!r}")
    if (getattr(tokenizer, "init_kwargs", None) or {}).get("prompt_normalizer") == "shapes":
        from ..data.shapes import fixed_prompt_set

        return fixed_prompt_set(split, n)
    return list((DEFAULT_CALIBRATION_PROMPTS if split == "seen" else DEFAULT_HELDOUT_PROMPTS)[:n])


class ListDataReader:
    """``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._index = 0

    def get_next(self):
        if self._index >= len(self._feeds):
            return None
        self._index += 1
        return self._feeds[self._index - 1]

    def rewind(self):
        self._index = 0


class _Reservoir(list):
    """At most ``capacity`` of the items appended, each kept with equal probability (reservoir sampling)."""

    def __init__(self, capacity: int, rng: np.random.Generator):
        super().__init__()
        self.capacity, self.rng, self.seen = capacity, rng, 0

    def append(self, item):
        self.seen += 1
        if len(self) < self.capacity:
            super().append(item)
        elif (slot := int(self.rng.integers(self.seen))) < self.capacity:
            self[slot] = item


class SampledRecorder(dict):
    """An ``ORTNeodragonPipeline`` recorder that keeps a uniform random sample of ``max_per_component`` feeds per
    graph as they come: a generation at the pipeline's defaults makes hundreds of transformer calls, which a
    full-size model could not all hold in memory. Each graph draws from its own generator (seeded by ``seed`` and
    its name), so a graph's sample does not depend on which other graphs are recorded (``--components``)."""

    def __init__(self, max_per_component: int, seed: int = 0):
        super().__init__()
        self.max_per_component, self.seed = max_per_component, seed

    def setdefault(self, name, default=None):
        if name not in self:
            rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
            self[name] = _Reservoir(self.max_per_component, rng)
        return self[name]


def collect_calibration_data(
    export_dir, prompts: Sequence[str] | None = None, seeds: Sequence[int] = (0,), max_per_component: int = 64,
    split: str = "seen", modes: Sequence[str] = ("monolithic", "hybrid"), decoder=None, images=(), **call_kwargs,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Feeds of every graph during ONNX-pipeline generations (fp32, CPU) of ``prompts`` x ``seeds``.

    The generations use the pipeline's own sampling defaults (steps, CFG; ``call_kwargs`` override them), so every
    graph is calibrated on the states it meets when deployed: 1-step generations without CFG missed ranges the
    transformer stages reach (5-6 % error on the HTP simulator against 1-2 %). ``prompts`` default to
    :func:`default_calibration_prompts` of ``split`` ("heldout": states to check the quantised graphs on). Each
    prompt runs with a DiT-made first frame (monolithic) and with its text-to-image first frame (hybrid) where the
    export has one, so every graph sees data (``modes`` picks); ``max_per_component`` feeds are kept per graph,
    drawn at random.

    The VAE encoder only runs on a given or text-to-image first frame, never in a monolithic generation: it is
    calibrated on the first and last frames of each monolithic video (decoded by the ``decoder_step`` graph, or by
    ``decoder``, a torch decoder for an export without one, see ``ort_pipeline.torch_vae_decoder``) and on
    ``images``. A ``ValueError`` says so when no frame can be made for it.
    """
    import torch

    from .ort_pipeline import ORTNeodragonPipeline

    recorder = SampledRecorder(max_per_component)
    pipe = ORTNeodragonPipeline(export_dir, recorder=recorder, decoder=decoder)
    if prompts is None:
        prompts = default_calibration_prompts(pipe.tokenizers.get("tokenizer_3"), split)
    runs = []
    if "monolithic" in modes:
        runs.append(dict(mode="monolithic"))
    if "hybrid" in modes and pipe.has("t2i_unet"):
        runs.append(dict(mode="hybrid"))
    can_decode = pipe.has("decoder_step") or decoder is not None
    encoder_frames = pipe.has("vae_encoder") and can_decode
    for prompt in prompts:
        for seed in seeds:
            for run in runs:
                generator = torch.Generator().manual_seed(seed)
                kwargs = {**run, **call_kwargs, "output_type": "pil" if can_decode else "latent"}
                result = pipe(prompt, generator=generator, **kwargs)
                if encoder_frames and run["mode"] == "monolithic":
                    frames = result[0]
                    for frame in frames[:1] + frames[1:][-1:]:
                        pipe.encode_first_frame(frame, generator)
    for image in images:
        pipe.encode_first_frame(image, torch.Generator().manual_seed(0))
    if pipe.has("vae_encoder") and not recorder.get("vae_encoder"):
        raise ValueError(
            "no calibration data for vae_encoder: the calibration runs made no first frame for it (no hybrid run, "
            "and no decoder_step graph to decode monolithic videos): pass decoder=torch_vae_decoder(vae) or images="
        )
    return {name: list(feeds) for name, feeds in recorder.items()}


# The held-out states a check measures each graph on (prompts and seeds calibration never saw). The worst of 4
# states understated the transformer stages' error (the embedded model's stage 2 at w8a16 on the HTP simulator: 1.8 %
# on 4 states of one seed, 3.5 % on 16 of two), and a stage call takes about a second there; the decoder graphs,
# up to 25 s a call, keep 4.
HELDOUT_SEEDS = (1, 2)
HELDOUT_STATES = {"transformer_stage": 16}
DEFAULT_HELDOUT_STATES = 4


def collect_heldout_states(export_dir, **collect_kwargs) -> dict[str, list[dict[str, np.ndarray]]]:
    """States to check the quantised graphs on: :func:`collect_calibration_data` of the held-out prompts and
    :data:`HELDOUT_SEEDS`, :data:`HELDOUT_STATES` of each graph's kind (else :data:`DEFAULT_HELDOUT_STATES`)."""
    from .exporter import read_manifest

    kinds = {name: entry["kind"] for name, entry in read_manifest(export_dir)["components"].items()}
    states = collect_calibration_data(export_dir, split="heldout", seeds=HELDOUT_SEEDS,
                                      max_per_component=max(HELDOUT_STATES.values()), **collect_kwargs)
    kept = {}
    for name, feeds in states.items():
        count = HELDOUT_STATES.get(kinds.get(name), DEFAULT_HELDOUT_STATES)
        kept[name] = feeds[:: max(1, len(feeds) // count)][:count]  # spread over every prompt, not the first's
    return kept


def activation_matmul_second_inputs(onnx_path) -> list[str]:
    """The second inputs of the MatMuls whose both inputs are activations (attention's Q·Kᵀ and P·V).

    Given both in uint16, the HTP computes such a MatMul as if the second input had 8 bits (measured on the HTP
    simulator: 1.65 % error on one MatMul against 0.0003 % on ONNX Runtime's CPU provider, and the transformer stages'
    error doubled); as signed int16 with a zero offset it matches (0.04 %). ``quantize_w8a16`` quantises them so."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [node.input[1] for node in graph.node
            if node.op_type == "MatMul" and not {node.input[0], node.input[1]} & constants]


def calibrated_ranges(onnx_path, calibration: Sequence[dict[str, np.ndarray]]) -> dict[str, tuple]:
    """Min-max range of every activation over ``calibration``, by ONNX Runtime's own MinMax calibrator (the one
    ``quantize`` runs), as ``{tensor: (lowest, highest)}``."""
    import tempfile

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory() as scratch:
        calibrator = create_calibrator(
            Path(onnx_path), augmented_model_path=str(Path(scratch) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax, use_external_data_format=True,
        )
        calibrator.collect_data(ListDataReader(calibration))
        ranges = {name: tuple(data.range_value) for name, data in calibrator.compute_data().data.items()}
        del calibrator
    return ranges


def widen_ranges(overrides: dict[str, list[dict]], ranges: dict[str, tuple], margin: float) -> dict:
    """Add ``rmin``/``rmax`` overrides that stretch each calibrated range ``margin`` times about zero.

    A few calibration generations do not reach every state a generation meets: on the HTP simulator the worst
    held-out state of the embedded model's ``transformer_stage_2`` lost 4.4 % by clipping at its history patch
    embedding, and 2.5 % with ranges widened 2x (a 16-bit grid has the resolution to spare). Tensors whose scale
    is fixed by an override (QNN's Sigmoid/Tanh outputs) keep it."""
    widened = {name: [dict(entry) for entry in entries] for name, entries in overrides.items()}
    for name, (lowest, highest) in ranges.items():
        entries = widened.setdefault(name, [{}])
        if len(entries) != 1 or "axis" in entries[0]:
            continue
        rmin = (np.minimum(lowest, 0) * margin).astype(np.asarray(lowest).dtype)
        rmax = (np.maximum(highest, 0) * margin).astype(np.asarray(highest).dtype)
        # a tensor handed on in a second type (QNN's mixed-precision "convert", e.g. an int16 attention output
        # read as uint16 by the next node) is quantised twice: both need the margin
        for entry in (entries[0], entries[0].get("convert")):
            if entry is not None and "scale" not in entry:
                entry.update(rmin=rmin, rmax=rmax)
    return widened


def quantize_w8a16(
    onnx_path, calibration: Sequence[dict[str, np.ndarray]], output_path=None, per_channel: bool = True,
    range_margin: float = DEFAULT_RANGE_MARGIN,
) -> Path:
    """Write the w8a16 QDQ version of ``onnx_path`` (default ``<name>.w8a16.onnx``), calibrated on ``calibration``.

    With ``per_channel``, Conv and Gemm weights get a scale per output channel (per tensor cost the transformer
    stages 2-4x the error on the HTP simulator; QNN has no per-channel MatMul, so those stay per tensor). Activation
    ranges are stretched ``range_margin`` times (see :func:`widen_ranges`; 1 is plain min-max)."""
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    onnx_path = Path(onnx_path)
    output_path = Path(output_path) if output_path else onnx_path.with_suffix(".w8a16.onnx")
    if not calibration:
        raise ValueError(f"no calibration data for {onnx_path.name}")
    large = onnx_path.stat().st_size > 2**30 or (onnx_path.parent / (onnx_path.name + "_data")).exists()
    preprocessed = onnx_path.with_suffix(".preproc.onnx")
    changed = qnn_preprocess_model(onnx_path, preprocessed, fuse_layernorm=True, save_as_external_data=large,
                                   all_tensors_to_one_file=True)
    source = preprocessed if changed else onnx_path
    overrides = {name: [{"quant_type": QuantType.QInt16, "symmetric": True}]
                 for name in activation_matmul_second_inputs(source)}
    config = get_qnn_qdq_config(
        str(source), ListDataReader(calibration), activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8,
        per_channel=per_channel, init_overrides=overrides or None,
    )
    if range_margin != 1.0:
        if range_margin < 1.0:
            raise ValueError(f"range_margin must be >= 1 (1: plain min-max), got {range_margin}")
        options = config.extra_options
        ranges = calibrated_ranges(source, calibration)
        options["TensorQuantOverrides"] = widen_ranges(options.get("TensorQuantOverrides") or {}, ranges,
                                                       range_margin)
    config.use_external_data_format = large
    quantize(str(source), str(output_path), config)
    if changed and preprocessed.exists():
        preprocessed.unlink()
        data = preprocessed.parent / (preprocessed.name + ".data")
        if data.exists():
            data.unlink()
    return output_path


def quantize_export(
    export_dir, components: Sequence[str] | None = None, calibration=None, progress=None,
    keep_fp16_kinds: Sequence[str] = KEEP_FP16_KINDS, **collect_kwargs,
) -> dict[str, Path]:
    """Quantise the graphs of an export folder to w8a16 (all, or those named, except ``keep_fp16_kinds``);
    records them in the manifest."""
    from .exporter import read_manifest, write_manifest

    export_dir = Path(export_dir)
    progress = progress or (lambda message: None)
    manifest = read_manifest(export_dir)
    if calibration is None:
        progress("collecting calibration data with the ONNX pipeline ...")
        calibration = collect_calibration_data(export_dir, **collect_kwargs)
    selected = {name: entry for name, entry in manifest["components"].items()
                if not components or name in components or entry["kind"] in components}
    missing = [name for name, entry in selected.items()
               if entry["kind"] not in keep_fp16_kinds and not calibration.get(name)]
    if missing:
        raise ValueError(f"no calibration data for {missing}: every graph quantised to w8a16 needs samples "
                         "(collect_calibration_data records them; name the others with components=)")
    written = {}
    for name, entry in selected.items():
        if entry["kind"] in keep_fp16_kinds:
            progress(f"      {name}: kept in fp16 (mixed precision, see KEEP_FP16_KINDS)")
            entry["w8a16_file"] = None
            continue
        feeds = calibration[name]
        progress(f"quantising {name} to w8a16 on {len(feeds)} calibration samples ...")
        path = quantize_w8a16(export_dir / entry["file"], feeds)
        entry["w8a16_file"] = path.name
        written[name] = path
    write_manifest(export_dir, manifest)
    return written
