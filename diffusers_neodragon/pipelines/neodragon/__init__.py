from .batch_generation import generate_prompt_file
from .pipeline_neodragon import NeodragonPipeline
from .pipeline_output import NeodragonPipelineOutput


__all__ = ["NeodragonPipeline", "NeodragonPipelineOutput", "generate_prompt_file"]
