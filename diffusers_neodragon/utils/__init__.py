"""Helpers shared by the models and pipelines (not part of the diffusers-facing API)."""

from .cuda_graphs import CUDAGraphRunner, enable_module_cuda_graphs, graph_key, module_cuda_graph_runner


__all__ = ["CUDAGraphRunner", "enable_module_cuda_graphs", "graph_key", "module_cuda_graph_runner"]
