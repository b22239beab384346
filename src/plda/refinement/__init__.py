"""Refiners: CAMs (and seeds) -> pseudo masks. Each is a ``Refiner`` (``plda.refinement.base``)
registered in ``plda.registry.REFINERS``: ``irn`` (IRN's boundary branch and random walk),
``affinity`` (AffinityNet), ``crf`` (the dense CRF), ``pamr`` (PAMR). ``walk`` holds the pair
affinities and the random walk IRN and AffinityNet share, ``relations`` IRN's relation labels."""
