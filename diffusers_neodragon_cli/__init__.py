"""The ``neodragon`` command.

It lives beside ``diffusers_neodragon``, not inside it, because importing that package registers its pipeline with
diffusers, which loads torch and diffusers (seconds): from here ``--help`` and every check of the arguments and of the
model folder's configs answer before either is imported. ``diffusers_neodragon`` is imported only to run.
"""

from .cli import build_parser, frame_strip, main


__all__ = ["build_parser", "frame_strip", "main"]
