"""The learner role: the distillation + policy-gradient losses, the update step, its data-parallel group, the rate
schedule and pretraining. May import model/, codec/ and common/.
"""
