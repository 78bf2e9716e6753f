"""divcfg: diversity-rewarded CFG distillation of text-to-music models, on Ray.

The code lives in rooms at the repository root (``common/ codec/ model/ actors/ learner/ reward/ world/ job/ deploy/
bench/ experiments/ conf/``; README "Architecture") and is imported as ``divcfg.<room>`` through the links in this folder (``divcfg/common -> ../common``, ...). So a plain
source tree (a Ray Jobs ``working_dir``, or ``python -m divcfg`` from a checkout), an editable install, a wheel (which
copies the rooms in) and static tools all see the same ``divcfg`` package.
"""
__version__ = "0.1.0"
