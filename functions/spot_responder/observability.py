"""Logger, Metrics and Tracer, created once for the whole service."""

import sys

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "spot-responder"

# Logs go to stderr so that the local CLI's stdout stays clean JSON; in Lambda both
# streams end up in CloudWatch Logs.
logger = Logger(service=SERVICE, stream=sys.stderr)
metrics = Metrics(service=SERVICE)
tracer = Tracer(service=SERVICE)
