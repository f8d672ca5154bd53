"""diffusers-neodragon: Neodragon text-to-video as a Hugging Face diffusers plugin.

Importing the package also makes pipeline folders saved by it loadable with plain
``diffusers.DiffusionPipeline.from_pretrained(folder)``: diffusers resolves the components listed as
``["diffusers_neodragon", "ClassName"]`` in ``model_index.json`` by looking for its loadable base classes in this
namespace (hence the re-exports below), and it resolves the pipeline class itself only on the ``diffusers``
module (hence the attribute set there).
"""

import sys as _sys

import diffusers as _diffusers
from diffusers import DiffusionPipeline, ModelMixin, SchedulerMixin
from transformers import PreTrainedModel, PreTrainedTokenizer, PreTrainedTokenizerFast

from .models.autoencoders import AsymmetricVAE, CausalVideoVAE, autoencoder_asymmetric, autoencoder_causal_video
from .models.context_adapter import ContextAdapter
from .models.quicksrnet import QuickSRNet
from .models.text_encoder_dt5 import DT5Config, DT5EncoderModel
from .models.transformers import NeodragonTransformer3DModel, transformer_neodragon
from .pipelines.neodragon.pipeline_neodragon import NeodragonPipeline
from .pipelines.neodragon.pipeline_output import NeodragonPipelineOutput
from .schedulers.scheduling_pyramidal_dmd import PyramidalDMDScheduler


__version__ = "0.1.0.dev0"

for _cls in (NeodragonPipeline,):
    if getattr(_diffusers, _cls.__name__, None) is None:
        setattr(_diffusers, _cls.__name__, _cls)

# diffusers records a component's module path in model_index.json; folders saved before models/ took diffusers'
# layout name the old paths, which stay importable as aliases of the new modules.
for _old, _module in {
    "models.transformer_neodragon": transformer_neodragon,
    "models.autoencoder_asymmetric": autoencoder_asymmetric,
    "models.causal_video_decoder": autoencoder_causal_video,
}.items():
    _sys.modules.setdefault(f"{__name__}.{_old}", _module)

__all__ = [
    "AsymmetricVAE",
    "CausalVideoVAE",
    "ContextAdapter",
    "DT5Config",
    "DT5EncoderModel",
    "NeodragonPipeline",
    "NeodragonPipelineOutput",
    "NeodragonTransformer3DModel",
    "PyramidalDMDScheduler",
    "QuickSRNet",
    # base classes diffusers' loader looks up in this namespace
    "DiffusionPipeline",
    "ModelMixin",
    "PreTrainedModel",
    "PreTrainedTokenizer",
    "PreTrainedTokenizerFast",
    "SchedulerMixin",
]
