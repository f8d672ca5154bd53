"""``python -m diffusers_neodragon_cli ...`` runs the ``neodragon`` command; so does a launcher given the module
(``torchrun ... -m diffusers_neodragon_cli generate --prompts FILE``)."""

import sys

from .cli import main


sys.exit(main())
