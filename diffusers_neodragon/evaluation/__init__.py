"""Evaluators of generated videos: ShapesBench scores videos of the synthetic Shapes world against their prompts."""

from .shapesbench import evaluate_video, format_shape_confusion, format_table, summarize


__all__ = ["evaluate_video", "format_shape_confusion", "format_table", "summarize"]
