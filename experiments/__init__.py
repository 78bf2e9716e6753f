"""The research A/B scripts behind RESULTS.md's codec, judge, FAD and claim sections, each run as
`python -m divcfg.experiments.NAME` (its docstring names the section it produced). May import bench/ and every room
below it.
"""
