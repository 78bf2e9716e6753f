"""The reward role and the judges: embedders, diversity, the scorer, independent judges, FAD and intervals, and `divcfg
eval`. May import model/, codec/ and common/.
"""
