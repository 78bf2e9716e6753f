"""The one place that wires the topology: `divcfg train`, the scheduler and its recovery and elastic pool, the actor
pools, run directories and step logs. May import every room below it.
"""
