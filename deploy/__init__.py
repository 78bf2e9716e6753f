"""Running on a cluster: `divcfg submit` and `divcfg scale`, the job request and dashboard client, KubeRay and Docker
files. May import job/ and every room below.
"""
