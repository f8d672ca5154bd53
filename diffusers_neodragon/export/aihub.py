"""Qualcomm AI Hub jobs for an export folder: compile → (link) → inference with profiling on a named device.

The job graph follows ai-hub-models' collection exports:

* every component but the transformer: ``submit_compile_job`` (QNN context binary) → ``submit_inference_job``
  with sample inputs and ``profile=True``;
* the pyramid stages of the transformer: ``submit_compile_and_link_jobs``, one compile job per stage to a QNN DLC
  whose graph is named after the stage, linked into a single multi-graph context binary whose graphs share the
  weights (one copy of the 1.5 B parameters on the device); inference jobs then address each stage's graph.

Nothing runs without an API token: :func:`require_token` stops before any upload with a message that says how to
configure one (``qai-hub configure --api_token ...``). ``dry_run=True`` checks the whole job graph without one,
through qai-hub's own client with the network replaced (:mod:`.aihub_offline`).
"""

from __future__ import annotations

import configparser
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


DEVICES = ("Snapdragon 8 Elite QRD", "Snapdragon X Elite CRD")
NO_TOKEN_MESSAGE = (
    "Qualcomm AI Hub is not configured: no API token found{where}. Get a token from your AI Hub account "
    "(https://app.aihub.qualcomm.com/ → Settings → API token) and run\n"
    "    qai-hub configure --api_token YOUR_API_TOKEN\n"
    "(or point QAIHUB_CLIENT_INI at a client.ini that holds one). No job was submitted."
)


class AIHubConfigurationError(RuntimeError):
    """Raised before any AI Hub work when no API token is configured (or qai-hub is missing)."""


def _import_hub():
    try:
        import qai_hub
    except ImportError as error:
        raise AIHubConfigurationError("qai-hub is not installed: pip install qai-hub") from error
    return qai_hub


def client_ini_path() -> Path:
    """Where qai-hub reads its configuration: $QAIHUB_CLIENT_INI or ~/.qai_hub/client.ini."""
    return Path(os.path.expanduser(os.environ.get("QAIHUB_CLIENT_INI", "~/.qai_hub/client.ini")))


def configured_token(path: Path | None = None) -> str | None:
    path = Path(path) if path else client_ini_path()
    if not path.is_file():
        return None
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
        token = parser.get("api", "api_token", fallback="").strip()
    except configparser.Error:
        return None
    return token or None


def require_token(path: Path | None = None) -> str:
    """The configured API token, or :class:`AIHubConfigurationError` with how to configure one."""
    path = Path(path) if path else client_ini_path()
    token = configured_token(path)
    if not token:
        raise AIHubConfigurationError(NO_TOKEN_MESSAGE.format(where=f" in {path}"))
    return token


@dataclass
class PlannedJob:
    """One node of the job graph (kept for printing and testing)."""

    kind: str  # compile | link | inference (with profile=True it is also the profile job)
    name: str
    inputs: list[str] = field(default_factory=list)  # names of the jobs whose output it consumes
    options: str = ""
    job: Any = None


def compile_options(precision: str, target: str | None = "qnn_context_binary") -> str:
    """AI Hub compile flags; ``target=None`` for ``submit_compile_and_link_jobs``, which adds
    ``--target_runtime qnn_dlc`` and the graph name itself."""
    if precision not in ("fp16", "w8a16"):
        raise ValueError(f"precision must be 'fp16' or 'w8a16', got {precision!r}")
    options = [f"--target_runtime {target}"] if target else []
    if precision == "fp16":
        options.append("--quantize_full_type float16")
    else:
        options.append("--quantize_io")
    return " ".join(options)


def _input_specs(entry: dict) -> dict[str, tuple]:
    return {name: (tuple(info["shape"]), info["dtype"]) for name, info in entry["inputs"].items()}


def _external_data_files(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    tensors = list(model.graph.initializer) + [
        attr.t for node in model.graph.node for attr in node.attribute if attr.type == onnx.AttributeProto.TENSOR
    ]
    return sorted({entry.value for tensor in tensors if tensor.data_location == onnx.TensorProto.EXTERNAL
                   for entry in tensor.external_data if entry.key == "location"})


def upload_path(path: Path) -> Path:
    """What AI Hub is given for the graph at ``path``: the ``.onnx`` file itself when it holds its weights; for a
    graph with external data (over 2 GB), a folder ``aihub/<stem>.onnx/`` beside it with the graph and its weights as
    ``<stem>.data`` (AI Hub takes a folder of exactly one ``.onnx`` and at most one ``.data``; our exporter and ORT's
    quantizer name the weights ``<file>_data`` / ``<file>.data``). The weights are hard-linked where possible (the
    folder is only for the upload, which zips it: ``onnx.load`` itself refuses hard-linked weights)."""
    import onnx

    path = Path(path)
    locations = _external_data_files(path)
    if not locations:
        return path
    if len(locations) > 1:
        raise ValueError(f"{path.name} keeps its weights in {len(locations)} files ({', '.join(locations)}); AI Hub "
                         "takes one .data file: re-save it with onnx.save(..., all_tensors_to_one_file=True)")
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    folder = path.parent / "aihub" / f"{stem}.onnx"
    data_name = f"{stem}.data"
    staging = folder.with_name(f".{folder.name}.tmp")
    if folder.exists():
        return folder
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    model = onnx.load(str(path), load_external_data=False)
    tensors = list(model.graph.initializer) + [
        attr.t for node in model.graph.node for attr in node.attribute if attr.type == onnx.AttributeProto.TENSOR
    ]
    for tensor in tensors:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data_name
    onnx.save(model, str(staging / f"{stem}.onnx"))
    try:
        os.link(path.parent / locations[0], staging / data_name)
    except OSError:
        shutil.copyfile(path.parent / locations[0], staging / data_name)
    os.replace(staging, folder)
    return folder


def _model_path(export_dir: Path, entry: dict, precision: str) -> Path:
    path = export_dir / entry["file"]
    if precision == "w8a16":
        quantised = path.with_suffix(".w8a16.onnx")
        if not quantised.exists():
            raise FileNotFoundError(f"{quantised.name} missing: export with --precision w8a16 first")
        path = quantised
    return upload_path(path)


def _inference_inputs(feeds: dict[str, np.ndarray], entry: dict) -> dict[str, list[np.ndarray]]:
    """One sample per input, in the graph's input order (AI Hub matches datasets to inputs by order)."""
    missing = [name for name in entry["inputs"] if name not in feeds]
    if missing:
        raise ValueError(f"sample inputs lack {missing}; the graph takes {list(entry['inputs'])}")
    return {name: [np.ascontiguousarray(feeds[name])] for name in entry["inputs"]}


def submit_jobs(
    export_dir,
    device: str,
    precision: str = "fp16",
    components: list[str] | None = None,
    hub=None,
    sample_inputs: dict[str, dict[str, np.ndarray]] | None = None,
    profile: bool = True,
    inference: bool = True,
    progress: Callable[[str], None] | None = None,
    config_path: Path | None = None,
    dry_run: bool = False,
) -> list[PlannedJob]:
    """Submit the job graph for ``device``; returns the planned jobs with their ``job`` handles.

    ``hub`` is the ``qai_hub`` module or a ``qai_hub.Client`` (injectable for tests). Without ``dry_run`` the token
    check comes first, before anything is read or uploaded. ``dry_run=True`` needs no token: the jobs go to
    :func:`.aihub_offline.offline_client`, qai-hub's own client with the network replaced, so everything qai-hub
    checks before an upload is checked and nothing is sent (the client is ``plan[0].job._owner``; its
    ``requests`` are what would have been sent).

    Profiling rides on the inference jobs (``submit_inference_job(..., profile=True)``; qai-hub 0.56 deprecated
    separate profile jobs): ``inference=False`` profiles on random data, ``profile=False`` only runs inference.
    """
    from .exporter import read_manifest
    from .htp_check import random_feeds

    compile_options(precision)  # a bad precision fails before any work
    if dry_run:
        from .aihub_offline import offline_client

        hub = hub or offline_client()
    else:
        require_token(config_path)
        hub = hub or _import_hub()
    progress = progress or (lambda message: None)
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    target_device = hub.Device(device)
    names = [n for n, e in manifest["components"].items()
             if not components or n in components or e["kind"] in components]
    stages = [n for n in names if manifest["components"][n]["kind"] == "transformer_stage"]
    others = [n for n in names if n not in stages]
    plan: list[PlannedJob] = []
    targets: dict[str, Any] = {}  # component -> (target model, graph name or None, source job)

    for name in others:
        entry = manifest["components"][name]
        options = compile_options(precision)
        progress(f"AI Hub: compile {name} for {device} ({options})")
        job = hub.submit_compile_job(model=str(_model_path(export_dir, entry, precision)), device=target_device,
                                     name=f"neodragon_{name}", input_specs=_input_specs(entry), options=options)
        plan.append(PlannedJob("compile", name, [], options, job))
        targets[name] = (job.get_target_model(), None, f"compile:{name}")

    if stages:
        # qai-hub's compile-and-link: one DLC per stage (graph named after the stage), linked into a single
        # multi-graph context binary whose graphs share the weights.
        entries = [manifest["components"][name] for name in stages]
        options = compile_options(precision, target=None)
        progress(f"AI Hub: compile {len(stages)} stage graphs to QNN DLCs ({options}) and link them into one "
                 "weight-shared context binary")
        compile_jobs, link = hub.submit_compile_and_link_jobs(
            [str(_model_path(export_dir, entry, precision)) for entry in entries], device=target_device,
            name="neodragon_transformer_stages", input_specs=[_input_specs(entry) for entry in entries],
            graph_names=list(stages), compile_options=options)
        for name, job in zip(stages, compile_jobs):
            plan.append(PlannedJob("compile", name, [], job.options, job))
        if link is None:
            raise RuntimeError("AI Hub: a stage compile job failed, so the stages were not linked (see the jobs: "
                               + ", ".join(job.url for job in compile_jobs) + ")")
        plan.append(PlannedJob("link", "transformer_stages", [f"compile:{n}" for n in stages], "", link))
        linked = link.get_target_model()
        for name in stages:
            targets[name] = (linked, name, "link:transformer_stages")

    if profile or inference:
        for name in names:
            model, graph, source = targets[name]
            entry = manifest["components"][name]
            options = f"--qnn_options context_enable_graphs={graph}" if graph else ""
            inputs = None
            if inference:
                feeds = (sample_inputs or {}).get(name) or random_feeds(entry["inputs"])
                inputs = _inference_inputs(feeds, entry)
            progress(f"AI Hub: {'inference' if inference else 'profile'}{' + profile' * (inference and profile)} "
                     f"{name}")
            job = hub.submit_inference_job(model=model, device=target_device, inputs=inputs, name=f"neodragon_{name}",
                                           options=options, profile=profile)
            plan.append(PlannedJob("inference", name, [source], options, job))
    return plan
