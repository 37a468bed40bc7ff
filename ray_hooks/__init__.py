"""Ray Spot Responder, the side that runs inside the Ray cluster.

On the head node, `python -m ray_hooks respond` drains the Ray nodes of interrupted EC2
instances and reports what each Ray job had on them (cluster contract v1); on every node,
`ray_hooks.preemption` tells any task or actor when its node goes.

It imports nothing from the Lambda side (`spot_responder`).
"""
