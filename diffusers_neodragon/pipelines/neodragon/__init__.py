from .pipeline_neodragon import NeodragonPipeline
from .pipeline_output import NeodragonPipelineOutput


__all__ = ["NeodragonPipeline", "NeodragonPipelineOutput"]
