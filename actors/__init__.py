"""The rollout role: actors that generate groups of samples per prompt with the current policy, and `divcfg sample`.
May import model/, codec/ and common/.
"""
