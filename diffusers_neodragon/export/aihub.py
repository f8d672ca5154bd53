"""Qualcomm AI Hub jobs for an export folder: compile → (link) → profile → inference on a named device.

The job graph follows ai-hub-models' collection exports:

* every component but the transformer: ``submit_compile_job`` (QNN context binary) → ``submit_profile_job`` →
  ``submit_inference_job`` with sample inputs;
* the pyramid stages of the transformer: one ``submit_compile_job`` per stage to a QNN DLC, then one
  ``submit_link_job`` of the three DLCs into a single multi-graph context binary whose graphs share the weights
  (one copy of the 1.5 B parameters on the device); profile and inference jobs then address each stage's graph.

Nothing runs without an API token: :func:`require_token` stops before any upload with a message that says how to
configure one (``qai-hub configure --api_token ...``).
"""

from __future__ import annotations

import configparser
import os
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

    kind: str  # compile | link | profile | inference
    name: str
    inputs: list[str] = field(default_factory=list)  # names of the jobs whose output it consumes
    options: str = ""
    job: Any = None


def compile_options(precision: str, target: str = "qnn_context_binary", graph_name: str | None = None) -> str:
    options = [f"--target_runtime {target}"]
    if precision == "fp16":
        options.append("--quantize_full_type float16")
    elif precision == "w8a16":
        options.append("--quantize_io")
    if graph_name:
        options.append(f"--qnn_graph_name {graph_name}")
    return " ".join(options)


def _input_specs(entry: dict) -> dict[str, tuple]:
    return {name: (tuple(info["shape"]), info["dtype"]) for name, info in entry["inputs"].items()}


def _model_path(export_dir: Path, entry: dict, precision: str) -> Path:
    path = export_dir / entry["file"]
    if precision == "w8a16":
        quantised = path.with_suffix(".w8a16.onnx")
        if not quantised.exists():
            raise FileNotFoundError(f"{quantised.name} missing: export with --precision w8a16 first")
        path = quantised
    return path


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
) -> list[PlannedJob]:
    """Submit the job graph for ``device``; returns the planned jobs with their ``job`` handles.

    ``hub`` is the ``qai_hub`` module (injectable for tests). The token check comes first, before anything is
    read or uploaded.
    """
    from .exporter import read_manifest
    from .htp_check import random_feeds

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
    targets: dict[str, Any] = {}  # component -> (target model, graph name or None)

    for name in others:
        entry = manifest["components"][name]
        options = compile_options(precision)
        progress(f"AI Hub: compile {name} for {device} ({options})")
        job = hub.submit_compile_job(model=str(_model_path(export_dir, entry, precision)), device=target_device,
                                     name=f"neodragon_{name}", input_specs=_input_specs(entry), options=options)
        plan.append(PlannedJob("compile", name, [], options, job))
        targets[name] = (job.get_target_model(), None, f"compile:{name}")

    if stages:
        dlcs = []
        for name in stages:
            entry = manifest["components"][name]
            options = compile_options(precision, target="qnn_dlc", graph_name=name)
            progress(f"AI Hub: compile {name} to a QNN DLC ({options})")
            job = hub.submit_compile_job(model=str(_model_path(export_dir, entry, precision)), device=target_device,
                                         name=f"neodragon_{name}", input_specs=_input_specs(entry), options=options)
            plan.append(PlannedJob("compile", name, [], options, job))
            dlcs.append(job.get_target_model())
        progress(f"AI Hub: link {len(stages)} stage graphs into one weight-shared context binary")
        link = hub.submit_link_job(dlcs, device=target_device, name="neodragon_transformer_stages")
        plan.append(PlannedJob("link", "transformer_stages", [f"compile:{n}" for n in stages], "", link))
        linked = link.get_target_model()
        for name in stages:
            targets[name] = (linked, name, "link:transformer_stages")

    for name in names:
        model, graph, source = targets[name]
        entry = manifest["components"][name]
        options = f"--qnn_options context_enable_graphs={graph}" if graph else ""
        if profile:
            progress(f"AI Hub: profile {name}")
            job = hub.submit_profile_job(model=model, device=target_device, name=f"neodragon_{name}", options=options)
            plan.append(PlannedJob("profile", name, [source], options, job))
        if inference:
            feeds = (sample_inputs or {}).get(name) or random_feeds(entry["inputs"])
            progress(f"AI Hub: inference {name}")
            job = hub.submit_inference_job(model=model, device=target_device, name=f"neodragon_{name}",
                                           inputs={k: [v] for k, v in feeds.items()}, options=options)
            plan.append(PlannedJob("inference", name, [source], options, job))
    return plan
