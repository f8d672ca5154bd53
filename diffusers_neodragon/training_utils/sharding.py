# SPDX-License-Identifier: Apache-2.0
"""What changes when a trained model is sharded (accelerate's FSDP2, ``fully_shard``) rather than replicated (DDP):
its parameters are ``DTensor`` shards, so the EMA, gradient checkpointing and every full copy (validation, the saved
folder) must be handled on all processes together. Under DDP or a single process each helper is the plain operation.

Every function here marked "collective" must be called on every process, in the same order."""

from __future__ import annotations

import copy
import logging

import torch


def is_sharded(accelerator) -> bool:
    """True under accelerate's FSDP (parameters split across processes)."""
    from accelerate.utils import DistributedType  # noqa: PLC0415

    return accelerator.distributed_type == DistributedType.FSDP


def keep_fsdp_forward_inputs(accelerator) -> None:
    """Under FSDP2 with mixed precision, stop FSDP casting each block's floating-point inputs to bf16 (accelerate's
    policy does; autocast already computes in bf16). Two reasons: the blocks' fp32 inputs (the temporal RoPE tables)
    then stay fp32 as under DDP, and non-reentrant gradient checkpointing works: FSDP2 skips the cast when a block
    is recomputed in the backward, so the recomputed tensors would be fp32 where the forward saved bf16
    (``CheckpointError: Recomputed values ... have different metadata``)."""
    import dataclasses  # noqa: PLC0415

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    policy = getattr(plugin, "mixed_precision_policy", None)
    if is_sharded(accelerator) and getattr(policy, "cast_forward_inputs", False) and plugin.fsdp_version == 2:
        plugin.mixed_precision_policy = dataclasses.replace(policy, cast_forward_inputs=False)


def _is_zero3(accelerator) -> bool:
    """True under DeepSpeed ZeRO stage 3 (parameters partitioned; DeepSpeed gathers them for a state dict)."""
    from accelerate.utils import DistributedType  # noqa: PLC0415

    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and getattr(plugin, "zero_stage", 0) == 3


def _is_dtensor(tensor) -> bool:
    from torch.distributed.tensor import DTensor  # noqa: PLC0415

    return isinstance(tensor, DTensor)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a ``DTensor`` shard (collective), gathered on the mesh's device and returned on the CPU
    (parameters offloaded to the CPU are gathered through the accelerator's device); a plain tensor as is."""
    if not _is_dtensor(tensor):
        return tensor.detach()
    from torch.distributed.tensor import DTensor  # noqa: PLC0415

    mesh_device = tensor.device_mesh.device_type
    local = tensor.to_local()
    if local.device.type != mesh_device:
        tensor = DTensor.from_local(local.to(mesh_device), tensor.device_mesh, tensor.placements,
                                    shape=tensor.shape, stride=tensor.stride())
    return tensor.full_tensor().detach().cpu()


def _shard_like(tensor: torch.Tensor, reference) -> torch.Tensor:
    """``tensor`` (whole, the same on every process) split as the ``DTensor`` ``reference`` is (collective)."""
    from torch.distributed.tensor import DTensor, distribute_tensor  # noqa: PLC0415

    mesh = reference.device_mesh
    sharded = distribute_tensor(tensor.detach().to(mesh.device_type, reference.dtype), mesh, reference.placements)
    local_device = reference.to_local().device
    if sharded.to_local().device != local_device:  # CPU offload: the shards live on the host
        sharded = DTensor.from_local(sharded.to_local().to(local_device), mesh, reference.placements,
                                     shape=reference.shape, stride=reference.stride())
    return sharded


def enable_gradient_checkpointing(model: torch.nn.Module) -> torch.nn.Module:
    """``--gradient_checkpointing`` for a trained model: its own checkpointing (diffusers'
    ``enable_gradient_checkpointing``, transformers' ``gradient_checkpointing_enable``), non-reentrant, which DDP and
    FSDP accept. A model without one is an error rather than a silently ignored option."""
    if getattr(model, "_supports_gradient_checkpointing", False) and hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    elif getattr(model, "supports_gradient_checkpointing", False) and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise ValueError(f"{type(model).__name__} has no gradient checkpointing: leave out --gradient_checkpointing.")
    return model


def clip_grad_norm(accelerator, model: torch.nn.Module, max_norm: float):
    """``accelerator.clip_grad_norm_`` over ``model``'s parameters. Under FSDP2 accelerate 1.16 looks the model up by
    comparing parameter lists with ``==``, which fails when two prepared models have parameters of the same shapes
    (Pyramidal DMD's student and fake score); torch's own clipping then takes the one global norm over the DTensor
    gradients."""
    if is_sharded(accelerator):
        accelerator.unscale_gradients()
        return torch.nn.utils.clip_grad_norm_(list(model.parameters()), max_norm)
    return accelerator.clip_grad_norm_(model.parameters(), max_norm)


def update_ema(ema, model: torch.nn.Module) -> None:
    """``ema.step`` over ``model``'s parameters, sharded or not. Under FSDP the EMA holds one shard per process, split
    as the parameters are (no process holds the whole average): an EMA made (or loaded) whole is split on the first
    update (collective); each update then runs on the local shards alone (diffusers' EMA uses foreach ops that
    DTensors lack)."""
    from torch.distributed.tensor import DTensor  # noqa: PLC0415

    parameters = list(model.parameters())
    if any(hasattr(p, "ds_id") for p in parameters):
        raise ValueError("EMA of a DeepSpeed ZeRO-3 model is not supported (its parameters are partitioned): pass "
                         "--no-use_ema or train with FSDP (training/configs/fsdp.yaml).")
    if len(parameters) != len(ema.shadow_params):
        raise ValueError(f"The EMA holds {len(ema.shadow_params)} tensors but the model has {len(parameters)} "
                         "parameters: make the EMA from the model it follows.")
    if not any(_is_dtensor(p) for p in parameters):
        ema.step(parameters)
        return
    shadows = [_shard_like(shadow, param) if _is_dtensor(param) and not _is_dtensor(shadow) else shadow
               for shadow, param in zip(ema.shadow_params, parameters)]
    ema.shadow_params = [s.to_local() if _is_dtensor(s) else s for s in shadows]
    try:
        ema.step([p.to_local() if _is_dtensor(p) else p for p in parameters])
    finally:
        ema.shadow_params = [
            DTensor.from_local(local, s.device_mesh, s.placements, run_check=False, shape=s.shape, stride=s.stride())
            if _is_dtensor(s) else local
            for local, s in zip(ema.shadow_params, shadows)
        ]


def full_ema_shadows(ema) -> list[torch.Tensor]:
    """The EMA's whole tensors (collective under FSDP), in the order of the model's parameters."""
    return [_full(shadow) for shadow in ema.shadow_params]


def save_ema(ema, folder, is_main_process: bool) -> None:
    """``ema.save_pretrained(folder)`` with the whole average (collective under FSDP; written by the main
    process)."""
    shadows = full_ema_shadows(ema)
    if is_main_process:
        kept = ema.shadow_params
        ema.shadow_params = shadows
        try:
            ema.save_pretrained(str(folder))
        finally:
            ema.shadow_params = kept


def _plain_class(module: torch.nn.Module) -> type:
    """The model's own class (FSDP2 swaps a sharded module's class for a subclass of it and ``FSDPModule``)."""
    from torch.distributed.fsdp import FSDPModule  # noqa: PLC0415

    return next(cls for cls in type(module).__mro__ if not issubclass(cls, FSDPModule))


def _plain_copy(module: torch.nn.Module, state: dict) -> torch.nn.Module:
    """A new plain (unsharded) model of ``module``'s class and config, on the CPU, holding the whole ``state``."""
    with torch.device("cpu"):
        plain = _plain_class(module).from_config(module.config)
    plain.load_state_dict(state)
    return plain


def shard_frozen_model(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """A frozen teacher (DMD's real score, the pruning teacher) split across the processes like the trained models
    (collective). Under FSDP: ``fully_shard`` per block of its ``_no_split_modules`` and at the root, so each GPU
    holds a 1/N slice and gathers one block at a time in the forward. Under DeepSpeed ZeRO-3: partitioned by an
    inference-only DeepSpeed engine (no optimiser), whose hooks stay on the returned module and gather each
    submodule's parameters for its forward. Nothing is prepared (no optimiser, no checkpoint). Every process must
    then run the same forwards (one process alone would wait for the others): for a use on the main process only,
    take :func:`whole_model` (FSDP). Under DDP, ZeRO-2 or one process the model is returned as is."""
    if any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"shard_frozen_model takes a frozen model; {type(model).__name__} has trainable parameters.")
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        return _zero3_partitioned(accelerator, model, plugin)
    if not is_sharded(accelerator):
        return model
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

    model.to(accelerator.device)
    block_types = tuple(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if module is not model and type(module).__name__ in block_types:
            fully_shard(module)
    fully_shard(model)
    return model


def _without_auto(config: dict) -> dict:
    """The DeepSpeed config without the ``"auto"`` entries accelerate fills in only when it prepares a model
    (DeepSpeed's defaults apply to them)."""
    return {k: _without_auto(v) if isinstance(v, dict) else v for k, v in config.items() if v != "auto"}


def _zero3_partitioned(accelerator, model: torch.nn.Module, plugin) -> torch.nn.Module:
    import deepspeed  # noqa: PLC0415

    config = _without_auto(copy.deepcopy(plugin.deepspeed_config))
    for key in ("optimizer", "scheduler", "gradient_clipping", "train_batch_size"):
        config.pop(key, None)
    config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)  # no training: any batch works
    engine = deepspeed.initialize(model=model.to(accelerator.device), config=config)[0]
    partitioned = sum(hasattr(p, "ds_id") for p in engine.module.parameters())
    logging.getLogger(__name__).info(f"ZeRO-3 partitions the frozen {type(model).__name__} ({partitioned} parameters)")
    return engine.module.eval()


def whole_model(model: torch.nn.Module, device: str | torch.device = "cpu",
                keep: bool = True) -> torch.nn.Module | None:
    """A plain model with the whole weights of ``model`` on ``device``: a new copy of a sharded one (collective, on
    every process; ``keep=False``, e.g. on all but the main process, takes part and returns None), the model itself
    otherwise."""
    if not any(_is_dtensor(p) for p in model.parameters()):
        return model
    state = {name: _full(value) for name, value in model.state_dict().items()}
    if not keep:
        return None
    return _plain_copy(model, state).to(device).eval().requires_grad_(False)


def full_model(accelerator, model: torch.nn.Module, model_of=None, ema=None,
               device: str | torch.device = "cpu") -> torch.nn.Module | None:
    """A plain (unsharded, unwrapped) model with the whole weights of the prepared ``model`` (collective under FSDP),
    or with the EMA's average when ``ema`` (which follows that model) is given.

    ``model_of`` maps the unwrapped module to the model wanted (a training wrapper's inner model). The main process
    gets it, the others ``None``: under DDP or a single process the trained model itself (a copy when ``ema`` is
    given), under FSDP (or DeepSpeed ZeRO-3) a new copy on ``device``."""
    model_of = model_of or (lambda module: module)
    unwrapped = accelerator.unwrap_model(model)
    target = model_of(unwrapped)
    if not (is_sharded(accelerator) or _is_zero3(accelerator)):
        if not accelerator.is_main_process:
            return None
        if ema is None:
            return target
        averaged = copy.deepcopy(target)
        ema.copy_to(averaged.parameters())
        return averaged
    prefix = next(name for name, module in unwrapped.named_modules() if module is target)
    prefix = prefix + "." if prefix else ""
    state = accelerator.get_state_dict(model)  # whole tensors on the main process (FSDP2: CPU; ZeRO-3: gathered)
    shadows = full_ema_shadows(ema) if ema is not None else None
    if not accelerator.is_main_process:
        return None
    plain = _plain_copy(target, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    if shadows is not None:
        with torch.no_grad():
            for param, shadow in zip(plain.parameters(), shadows):
                param.copy_(shadow)
    return plain.to(device)
