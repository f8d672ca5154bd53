"""Model classes; import them from the package root (``diffusers_neodragon``) or their modules."""
