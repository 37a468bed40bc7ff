"""Ray Spot Responder: the Lambda side (notices in, drains and ledger entries out)."""
