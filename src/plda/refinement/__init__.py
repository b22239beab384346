"""Refinement of CAMs into pseudo masks: dense CRF (and, later, AffinityNet / IRN / PAMR)."""
