"""Moving records and weights between processes, and connecting to a Ray cluster. Imports nothing of divcfg outside
this package.
"""
