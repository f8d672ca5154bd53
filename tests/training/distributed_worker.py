"""Run one training script's ``main`` in this process, as one of the processes of a (CPU, gloo) distributed run.

``python tests/training/distributed_worker.py MODE CONFIG SCRIPT [script options ...]``, MODE ``single`` (plain
``python``) or ``ddp`` / ``fsdp`` (under ``torch.distributed.run``). ``fsdp`` reads the ``fsdp_config`` of the
accelerate config file CONFIG as ``accelerate launch`` would (``FSDP_*`` variables), because accelerate 1.16 never
selects FSDP when the device is the CPU (its multi-CPU state is DDP only): the worker switches the accelerator's state
to FSDP after it is made. FSDP2 itself (``fully_shard``, DTensor collectives) runs on the CPU with gloo.
"""

import os
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# Accelerate's variables for a launch from a config file (what `accelerate launch --config_file` exports).
FSDP_ENV_NAMES = {"fsdp_transformer_layer_cls_to_wrap": "FSDP_TRANSFORMER_CLS_TO_WRAP"}


def force_fsdp(config_path: str) -> None:
    """Make every ``Accelerator`` of this process shard its prepared models with the config file's FSDP settings."""
    import yaml

    config = yaml.safe_load(Path(config_path).read_text())
    for key, value in config["fsdp_config"].items():
        os.environ[FSDP_ENV_NAMES.get(key, key.upper())] = str(value).lower() if isinstance(value, bool) else str(value)
    os.environ["FSDP_OFFLOAD_PARAMS"] = "false"  # the parameters live on the CPU already

    import accelerate
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original_init = accelerate.Accelerator.__init__

    def init(self, *args, **kwargs):
        plugin = FullyShardedDataParallelPlugin()
        original_init(self, *args, fsdp_plugin=plugin, **kwargs)
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
        AcceleratorState._shared_state["fsdp_plugin"] = plugin
        if self.state.mixed_precision != "no":  # as accelerate sets it up for FSDP on a GPU
            plugin.set_mixed_precision(self.state.mixed_precision)

    accelerate.Accelerator.__init__ = init


def main() -> None:
    mode, config, script, *options = sys.argv[1:]
    os.environ["ACCELERATE_USE_CPU"] = "true"
    if mode == "fsdp":
        force_fsdp(config)
    from tests.script_loading import load_script

    module = load_script(script)
    module.main(module.parse_args(options))


if __name__ == "__main__":
    main()
