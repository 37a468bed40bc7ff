"""Ray Spot Responder, the head-node side: `python -m ray_hooks respond` drains the Ray nodes
of interrupted EC2 instances and reports what each Ray job had on them (cluster contract v1).

It runs inside the Ray cluster and imports nothing from the Lambda side (`spot_responder`).
"""
