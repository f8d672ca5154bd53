"""``from_pretrained`` for :class:`NeodragonPipeline`: the published releases converted on the fly, diffusers-format
folders with every load option reaching the nested first-frame pipeline, and bad input refused up front.

Bad input gets one ``ValueError`` line before any weight is read: a local path that does not exist (not a Hub id
problem), a folder holding only pickle weights (safetensors is required unless ``use_safetensors=False`` is passed
explicitly), a truncated or corrupted safetensors file.
"""

from __future__ import annotations

import contextlib
import inspect
import logging as std_logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline
from diffusers.utils import logging
from huggingface_hub import snapshot_download

from ..pipelines.neodragon.mode_defaults import MODES
from .releases import (
    OFFICIAL_VAE_FOLDER,
    PYRAMID_FLOW_VARIANTS,
    TEXT_FOLDERS,
    is_official_neodragon_layout,
    is_pyramid_flow_layout,
    load_official_neodragon,
    load_pyramid_flow,
    official_neodragon_folders,
    official_neodragon_modes,
    pyramid_flow_variants,
)
from .safetensors_folders import check_weights_tree, read_json


logger = logging.get_logger(__name__)

_DOWNLOAD_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "proxies")
# Options of DiffusionPipeline.from_pretrained that concern how weights are loaded, not which components: they apply
# to a nested pipeline (first_frame_pipeline) as they apply to the top-level components.
_NESTED_LOAD_KWARGS = ("dtype", "torch_dtype", "device_map", "max_memory", "offload_folder", "offload_state_dict",
                       "variant", "use_safetensors", "low_cpu_mem_usage", "disable_mmap")


def looks_like_local_path(name: str) -> bool:
    """Whether ``name`` can only be meant as a local path: it starts with ``/``, ``.`` or ``~``, is absolute, holds
    a platform separator other than ``/``, or has more than one ``/`` (a Hub id is ``name`` or ``owner/name``)."""
    return (
        name.startswith(("/", ".", "~"))
        or os.path.isabs(name)
        or (os.sep != "/" and os.sep in name)
        or (os.altsep is not None and os.altsep != "/" and os.altsep in name)
        or name.count("/") > 1
    )


def check_local_path(name: str | os.PathLike) -> Path | None:
    """The folder ``name`` names, ``None`` for a Hub id; a local-looking path that is not a folder is an error."""
    name = os.fspath(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{name} is a file, not a folder: from_pretrained takes a pipeline folder or a Hub repo id.")
    if looks_like_local_path(name):
        raise ValueError(f"{name} does not exist: there is no such folder (a local path, not a Hub repo id).")
    return None


def resolve_snapshot(
    repo_or_path: os.PathLike, folders: Iterable[str] | None = None, **download_kwargs
) -> Path:
    """A local folder as is; a Hub repo id through ``huggingface_hub.snapshot_download`` (only ``folders``, plus
    every JSON file, when given)."""
    path = check_local_path(repo_or_path)
    if path is not None:
        return path
    allow = None if folders is None else ["*.json", *[f"{name}/*" for name in folders]]
    kwargs = {k: v for k, v in download_kwargs.items() if k in _DOWNLOAD_KWARGS and v is not None}
    return Path(snapshot_download(os.fspath(repo_or_path), allow_patterns=allow, **kwargs))


class _NestedPipelineNotice(std_logging.Filter):
    """Drops diffusers' "You have passed a non-standard module <whole config dump>. We cannot verify whether it has
    the correct type" for the nested pipelines this loader itself built from the folder's own model_index.json."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not record.getMessage().startswith("You have passed a non-standard module")


@contextlib.contextmanager
def _quiet_nested_pipeline_notice() -> Iterator[None]:
    diffusers_logger = logging.get_logger("diffusers.pipelines.pipeline_loading_utils")
    notice = _NestedPipelineNotice()
    diffusers_logger.addFilter(notice)
    try:
        yield
    finally:
        diffusers_logger.removeFilter(notice)


def nested_pipeline_folders(root: Path, config: dict[str, Any]) -> list[str]:
    """Components of a saved pipeline that are pipelines themselves (a sub-folder with its own model_index.json)."""
    return [
        name
        for name, value in config.items()
        if isinstance(value, (list, tuple)) and value and value[0] is not None
        and (root / name / "model_index.json").is_file()
    ]


class OfficialLayoutLoaderMixin:
    """Lets ``from_pretrained`` load the published releases as they are, and diffusers-format folders fully.

    A base of :class:`NeodragonPipeline` (before ``DiffusionPipeline``). A diffusers-format folder or repo (with
    ``model_index.json``) loads through diffusers' loader, with two additions: ``dtype``, ``device_map``,
    ``variant`` and the other weight-loading options reach the nested ``first_frame_pipeline`` too (diffusers passes
    none of them to a nested pipeline), and weights are safetensors only by default (``use_safetensors=True``; a
    folder holding only pickle weights is refused naming the file, a damaged safetensors file is one line naming
    it). An official Neodragon snapshot (see :func:`is_official_neodragon_layout`) is converted on the fly by
    :func:`load_official_neodragon` (``mode=`` picks hybrid or monolithic; default hybrid when present), a
    Pyramid-Flow SD3 snapshot (see :func:`is_pyramid_flow_layout`) by :func:`load_pyramid_flow`
    (``pyramid_flow_variant="384p" | "768p"``; default the one present, 384p first); one warning line says so. For a
    Hub id only the JSON files are fetched first to tell the layout, then only the folders needed.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, mode: str | None = None, **kwargs):
        path = check_local_path(pretrained_model_name_or_path)
        download = {k: kwargs.get(k) for k in _DOWNLOAD_KWARGS if k in kwargs}
        probe = path or resolve_snapshot(pretrained_model_name_or_path, folders=(), **download)
        variant = kwargs.pop("pyramid_flow_variant", None)
        if is_official_neodragon_layout(probe):
            available = official_neodragon_modes(probe)
            mode = mode or ("hybrid" if "hybrid" in available else "monolithic")
            if mode not in MODES:
                raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
            layout, folders = "official Neodragon", official_neodragon_folders(mode)
        elif is_pyramid_flow_layout(probe):
            if mode not in (None, "monolithic"):
                raise ValueError(f"Pyramid-Flow generates in monolithic mode only, got mode={mode!r}.")
            variant = variant or pyramid_flow_variants(probe)[0]
            if variant not in PYRAMID_FLOW_VARIANTS:
                raise ValueError(
                    f"pyramid_flow_variant must be one of {sorted(PYRAMID_FLOW_VARIANTS)}, got {variant!r}"
                )
            mode, layout = "monolithic", f"Pyramid-Flow SD3 ({variant})"
            folders = [*TEXT_FOLDERS, OFFICIAL_VAE_FOLDER, PYRAMID_FLOW_VARIANTS[variant][0]]
        else:
            if variant is not None:
                raise ValueError("pyramid_flow_variant is only for a Pyramid-Flow SD3 snapshot.")
            if mode is not None:
                kwargs["mode"] = mode
            return cls._from_diffusers_layout(pretrained_model_name_or_path, path, **kwargs)

        root = path or resolve_snapshot(pretrained_model_name_or_path, folders=folders, **download)
        torch_dtype, dtype = kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None)
        dtype = torch_dtype or dtype
        for key in _DOWNLOAD_KWARGS:
            kwargs.pop(key, None)
        for harmless in ("low_cpu_mem_usage", "use_safetensors"):  # these layouts are always read with safetensors
            kwargs.pop(harmless, None)
        # Component overrides (e.g. super_resolution=QuickSRNet(...)) are taken as given; anything else is refused
        # before the (long) conversion starts.
        allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unsupported = sorted(k for k in kwargs if k not in allowed)
        if unsupported:
            raise ValueError(
                f"Arguments {unsupported} are not supported when loading the {layout} layout (supported: mode, "
                "torch_dtype, pyramid_flow_variant, download options and the pipeline's own arguments)."
            )
        if layout == "official Neodragon":
            components = load_official_neodragon(root, mode=mode, dtype=dtype)
        else:
            components = load_pyramid_flow(root, variant=variant, dtype=dtype)
        components.update(kwargs)
        logger.warning(
            f"{pretrained_model_name_or_path} is in the {layout} layout: converted on the fly (mode={mode}); "
            "save_pretrained() keeps a diffusers copy that loads without conversion."
        )
        return cls(**components)

    @classmethod
    def _from_diffusers_layout(cls, name, path: Path | None, **kwargs):
        """diffusers' own loader, after the safetensors checks, with the nested pipelines loaded first with the
        same weight-loading options and passed in as components."""
        kwargs.setdefault("use_safetensors", True)
        if path is None:  # a Hub repo: download what diffusers would, then load it as a local folder
            download = {k: kwargs.pop(k) for k in _DOWNLOAD_KWARGS if k in kwargs}
            path = Path(cls.download(name, variant=kwargs.get("variant"), use_safetensors=kwargs["use_safetensors"],
                                     **download))
        if kwargs["use_safetensors"]:
            check_weights_tree(path)
        index = path / "model_index.json"
        config = read_json(index) if index.is_file() else {}
        nested = [n for n in nested_pipeline_folders(path, config) if n not in kwargs]
        options = {k: kwargs[k] for k in _NESTED_LOAD_KWARGS if k in kwargs}
        for component in nested:
            kwargs[component] = DiffusionPipeline.from_pretrained(os.fspath(path / component), **options)
        with _quiet_nested_pipeline_notice():
            if not nested or kwargs.get("variant") is None:
                pipe = super().from_pretrained(path, **kwargs)
            else:
                # diffusers 0.42 looks for variant files in every component folder and fails (IndexError) on a
                # nested pipeline's sub-folders, whose names have no extension. The nested pipelines are already
                # loaded, so the rest loads from a view of the folder without them.
                with tempfile.TemporaryDirectory(prefix="neodragon_view_") as view:
                    for entry in path.iterdir():
                        if entry.name not in nested:
                            os.symlink(entry.resolve(), Path(view) / entry.name)
                    pipe = super().from_pretrained(view, **kwargs)
        pipe.register_to_config(_name_or_path=os.fspath(name))
        return pipe
