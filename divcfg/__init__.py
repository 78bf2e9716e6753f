"""divcfg: diversity-rewarded CFG distillation of text-to-music models, on Ray.

The code lives in rooms at the repository root (``common/ actors/ learner/ reward/ world/ job/ deploy/ bench/ conf/``) and is
imported as ``divcfg.<room>``. An installed copy maps the rooms through setuptools' ``package-dir``. A plain source
tree (a Ray Jobs ``working_dir``, or ``python -m divcfg`` from a checkout) has no such mapping, so the repository
root is added to this package's search path when the rooms sit beside it.
"""
import os as _os

__version__ = "0.1.0"

_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "common")) and _os.path.isfile(_os.path.join(_root, "common", "__init__.py")):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821
