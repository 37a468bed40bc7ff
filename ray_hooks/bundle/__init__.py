"""The `ray up` bundle: cluster-spot.yaml (a template), its renderer, an example job."""
