"""Test suites. Powertools reads its settings at import time: give them test values first."""

import os

os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "spot-responder")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "SpotResponder")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-west-2")
